"""The toy CLIP training recipe (hookedclip.toy.train) on a TINY architecture: the loss goes
down, an interrupted run resumes to exactly the parameters of an uninterrupted one, the
exported files load, and the planted spurious structure of the training distribution."""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np
import open_clip
import pytest
import torch

from hookedclip.cli.toy import add_toy_commands
from hookedclip.toy import model as toy_model
from hookedclip.toy.splits import CANONICAL_SEED
from hookedclip.toy.train import (
    CAPTION_KEEP,
    CHECKPOINT_FILE,
    batch_items,
    clip_loss,
    lr_factor,
    model_card_markdown,
    train,
)
from hookedclip.toy.world import SHAPES, SpuriousSpec, ToyWorld
from hookedclip.zeroshot import accuracy_text

TINY = dict(
    embed_dim=16,
    vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
    text_cfg=dict(context_length=20, vocab_size=49408, width=32, heads=2, layers=1),
)
QUIET = dict(progress=False, num_threads=None)


def _params(out_dir) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=False)["model"]


def test_loss_goes_down_and_export_loads(tmp_path):
    result = train(
        tmp_path,
        steps=40,
        batch_size=32,
        lr=3e-3,
        seed=0,
        warmup=5,
        ckpt_every=20,
        final_eval_n=40,
        eval_every=20,
        eval_n=40,
        **TINY,
        **QUIET,
    )
    losses = result["losses"]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < np.mean(losses[:4]) - 0.3, losses
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["steps"] == 40 and set(card["accuracy"]) >= {"shape", "color", "texture"}
    card_text = (tmp_path / "MODEL_CARD.md").read_text()
    assert card_text == model_card_markdown(card)
    assert card["train_threads"] == torch.get_num_threads()
    # The monitoring run at step 20 records the size of its canonical validation sets, for the card's intervals.
    assert [e["step"] for e in card["training_curve"]] == [20]
    assert card["training_curve_eval"] == {
        "n": 40,
        "n_spurious": 40,
        "spurious_group_n": 10,
        "split": "val",
        "seed": CANONICAL_SEED,
    }
    assert '40 held-out images of `ToyWorld(split="val"' in card_text
    # The exported (sparse-embedding) file rebuilds exactly the trained parameters.
    source, _ = toy_model.load_open_clip_toy(tmp_path)
    trained = _params(tmp_path)
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    stored = card["token_embedding_rows_stored"]
    assert 0 < stored < 1000  # only the rows of tokens that occur in captions moved
    model = toy_model.load_toy_model(weights=tmp_path)
    assert model.cfg.source == "toy" and model.cfg.text.context_length == 20


def test_resume_after_interruption_is_bit_identical(tmp_path):
    kw = dict(steps=12, batch_size=16, lr=3e-3, seed=1, warmup=3, ckpt_every=4, export=False, **TINY, **QUIET)
    train(tmp_path / "straight", **kw)
    first = train(tmp_path / "resumed", stop_after=6, **kw)  # "interrupted" after step 6
    assert first["step"] == 6 and "card" not in first
    torch.manual_seed(12345)  # a different global torch RNG state: training must not depend on it
    second = train(tmp_path / "resumed", **kw)
    assert second["step"] == 12 and len(second["losses"]) == 12
    a, b = _params(tmp_path / "straight"), _params(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ca = torch.load(tmp_path / "straight" / CHECKPOINT_FILE, weights_only=False)
    cb = torch.load(tmp_path / "resumed" / CHECKPOINT_FILE, weights_only=False)
    assert ca["state"]["losses"] == cb["state"]["losses"]
    # A finished run re-run with resume does no more steps; a different recipe is refused.
    assert train(tmp_path / "straight", **kw)["step"] == 12
    with pytest.raises(ValueError, match="different recipe"):
        train(tmp_path / "straight", **{**kw, "lr": 1e-3})


def test_no_resume_starts_over(tmp_path):
    kw = dict(steps=4, batch_size=8, lr=1e-3, seed=0, warmup=1, export=False, **TINY, **QUIET)
    train(tmp_path, stop_after=2, **kw)
    assert train(tmp_path, resume=False, stop_after=1, **kw)["step"] == 1


def test_clip_loss_matches_open_clip():
    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    scale = torch.tensor(2.0)
    expected = open_clip.ClipLoss()(
        torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1), scale.exp()
    )
    assert torch.allclose(clip_loss(img, txt, scale), expected, atol=1e-6)


def test_lr_schedule():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-9)


def test_training_distribution_plants_the_spurious_textures():
    spec = SpuriousSpec()
    world = ToyWorld(6000, seed=3, spurious_in_train=spec)
    plain = ToyWorld(6000, seed=3)
    counts = collections.Counter((a.shape, a.texture) for a in world.attributes())
    for cls, own, other in (("circle", "stripes", "dots"), ("square", "dots", "stripes")):
        n = sum(v for (s, _), v in counts.items() if s == cls)
        assert abs(counts[(cls, own)] / n - spec.p_aligned) < 0.03
        assert counts[(cls, own)] + counts[(cls, other)] == n
    triangles = [a.texture for a in world.attributes() if a.shape == "triangle"]
    assert len(set(triangles)) == 4
    # Only circle/square textures change; captions follow the drawn attributes.
    for a, b in zip(world.attributes(range(200)), plain.attributes(range(200))):
        assert a.shape == b.shape and a.color == b.color
        if a.shape not in spec.classes:
            assert a == b
    assert world.captions(range(5)) == [world[i]["caption"] for i in range(5)]
    test = ToyWorld(300, seed=3, split="test", spurious_in_train=spec)
    assert test.attributes() == ToyWorld(300, seed=3, split="test").attributes()


def test_cli_parses_toy_commands():
    parser = argparse.ArgumentParser(prog="hookedclip")
    add_toy_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "toy",
            "train",
            "--out",
            "x",
            "--steps",
            "5",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--seed",
            "2",
            "--no-resume",
        ]
    )
    assert (args.out, args.steps, args.batch_size, args.lr, args.seed, args.no_resume) == ("x", 5, 8, 1e-3, 2, True)
    assert callable(args.func)
    args = parser.parse_args(["toy", "evaluate", "--n", "100"])
    assert args.n == 100 and callable(args.func)


def test_batches_are_world_items_with_shape_hard_negatives():
    spec = SpuriousSpec()
    world = ToyWorld(10_000, seed=0, caption_keep=CAPTION_KEEP, spurious_in_train=spec)
    attrs, texts = batch_items(world, 2, 32, hard_negatives=0.0)
    assert attrs == world.attributes(range(64, 96)) and texts == world.captions(range(64, 96))
    attrs, texts = batch_items(world, 2, 32, hard_negatives=0.5)  # 2 blocks of 7, then plain items
    assert attrs[14:] == world.attributes(range(78, 96)) and texts[14:] == world.captions(range(78, 96))
    for block in (attrs[:7], attrs[7:14]):
        assert [a.shape for a in block] == list(SHAPES)
        assert len({(a.color, a.background) for a in block}) == 1
        assert len({a.texture for a in block if a.shape not in spec.classes}) == 1
        assert {a.texture for a in block if a.shape in spec.classes} <= set(spec.textures)
    for a, text in zip(attrs[:14], texts[:14]):
        assert a.shape in text  # the caption describes the modified item
    assert batch_items(world, 2, 32, 0.5) == (attrs, texts)  # deterministic


def _limits(card: dict) -> str:
    return model_card_markdown(card).split("## Limits")[1]


def test_model_card_quality_bar_follows_the_accuracies():
    card = toy_model.read_card()
    shipped = _limits(card)
    flat_shipped = shipped.replace("\n  ", " ")  # each figure with its 95% Wilson interval on the test set
    assert (
        "colour (98.7% [98.0, 99.1]) and texture (99.2% [98.7, 99.5]) reach it; shape does not (81.8% [80.0, 83.4])"
        in (flat_shipped)
    )
    assert "What limits shape is the training budget" in flat_shipped and "(its largest figure)" in flat_shipped
    assert "hookedclip toy train --eval-every 250 --threads 1" in model_card_markdown(card)
    # All three at the bar: nothing limits them.
    passing = _limits({**card, "accuracy": {**card["accuracy"], "shape": 0.95}})
    assert "shape (95.0% [94.0, 95.9]), colour (98.7% [98.0, 99.1]) and texture (99.2% [98.7, 99.5]) reach it." in (
        passing.replace("\n  ", " ")
    )
    assert "What limits" not in passing
    # A figure below the curve's best is named with its step; a falling curve is said to be falling.
    curve = [{**e, "color": 0.97} for e in card["training_curve"]]
    worse = _limits({**card, "accuracy": {**card["accuracy"], "color": 0.5}, "training_curve": curve})
    flat = worse.replace("\n  ", " ")
    assert "colour does not (50.0% [47.8, 52.2])" in flat and "What limits shape and colour" in flat
    assert f"its largest figure: {accuracy_text(0.97, 400)} at step 250" in flat and "no longer rising" in flat


def test_model_card_states_the_training_curve_size_and_every_point_interval():
    """The shipped card records how many images each training-curve accuracy was measured on, the
    figures are whole counts of it, and MODEL_CARD.md shows every point with its Wilson interval."""
    card = toy_model.read_card()
    sizes = card["training_curve_eval"]
    assert (sizes["n"], sizes["n_spurious"], sizes["spurious_group_n"]) == (400, 400, 100)
    text = model_card_markdown(card)
    assert "400 held-out images" in text and "100 per group" in text
    columns = {"sp_avg": sizes["n_spurious"], "sp_wga": sizes["spurious_group_n"]}
    for entry in card["training_curve"]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {entry['step']:,} |"))
        for key, value in entry.items():
            if key in ("step", "time_s", "loss"):
                continue
            n = columns.get(key, sizes["n"])
            assert round(round(value * n) / n, 4) == value, (entry["step"], key, value, n)  # a whole count of n
            assert f" {accuracy_text(value, n)} |" in row, (entry["step"], key)
    assert "monitoring images, whose number" not in text
    # A card without the sizes says so instead of showing intervals it cannot have.
    bare = model_card_markdown({k: v for k, v in card.items() if k != "training_curve_eval"})
    assert "does not record, so the figures carry no interval" in bare and "| 250 | 2.671 | 26.2% |" in bare
