"""The shipped toy CLIP (hookedclip/toy/weights): it loads through ``from_open_clip``'s path,
equals the open_clip model it was converted from, reproduces its card's accuracies on a
fresh held-out sample, and shows the planted spurious gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hookedclip import HookedCLIP
from hookedclip.toy import model as toy_model
from hookedclip.toy.evaluate import EVAL_ATTRIBUTES, binomial_se, evaluate, format_table
from hookedclip.toy.train import model_card_markdown
from hookedclip.toy.world import CAPTION_ATTRIBUTES, ToyWorld, class_prompts

FRESH_SEED = 4242  # differs from the card's evaluation seed
N_FRESH = 2000  # ~10 s to evaluate; each attribute's margin below is then about 3-4 points or less


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def card() -> dict:
    return toy_model.read_card()


@pytest.fixture(scope="module")
def pair():
    source, _ = toy_model.load_open_clip_toy()
    return source, toy_model.load_toy_model()


@pytest.fixture(scope="module")
def fresh_eval(pair) -> dict:
    return evaluate(pair[1], n=N_FRESH, seed=FRESH_SEED)


def test_shipped_files_are_small_and_described(card):
    directory = toy_model.weights_dir()
    size = (directory / toy_model.WEIGHTS_FILE).stat().st_size
    assert size < 10 * 2**20, f"{size / 2**20:.1f} MiB"
    assert (directory / "MODEL_CARD.md").exists()
    assert card["world_version"] == toy_model.WORLD_VERSION
    assert card["config"] == {
        "embed_dim": toy_model.TOY_EMBED_DIM,
        "vision_cfg": toy_model.TOY_VISION_CFG,
        "text_cfg": toy_model.TOY_TEXT_CFG,
    }
    assert set(card["accuracy"]) == set(EVAL_ATTRIBUTES) and "worst_group" in card["spurious"]  # all tested below


def test_loads_through_from_open_clip_and_matches_open_clip(pair, card):
    source, model = pair
    assert isinstance(model, HookedCLIP)
    cfg = model.cfg
    assert (cfg.model_name, cfg.source) == ("toy", "toy")
    assert cfg.pretrained == f"toy-world-v{card['world_version']}/{card['checkpoint_id']}"
    assert cfg.image_mean == toy_model.TOY_IMAGE_MEAN and cfg.image_std == toy_model.TOY_IMAGE_STD
    assert cfg.text.context_length == toy_model.TOY_TEXT_CFG["context_length"]
    assert cfg.vision.image_size == 32 and cfg.vision.patch_size == 8
    world = ToyWorld(16, seed=9, split="test")
    images = toy_model.images_to_tensor(world.images())
    texts = [world[i]["caption"] for i in range(len(world))] + ["a photo of a dog.", "a heart"]
    with torch.no_grad():
        assert rel_err(source.encode_image(images), model.encode_image(images)) < 1e-5
        tokens = model.tokenize(texts)
        assert rel_err(source.encode_text(tokens), model.encode_text(tokens)) < 1e-5
    assert HookedCLIP.from_pretrained("toy").cfg.pretrained == cfg.pretrained


def test_rebuilt_token_embedding_is_the_trained_one(pair, card):
    table = pair[0].token_embedding.weight
    assert toy_model.table_hash(table) == card["token_embedding_sha256"]
    packed = toy_model.pack_state(pair[0], card["seed"])
    assert packed[toy_model.ROWS_KEY].numel() == card["token_embedding_rows_stored"]
    full = toy_model.unpack_state(packed, card["seed"], table.shape[0])
    assert torch.equal(full[toy_model.TOKEN_KEY], table)


def test_tokenizer_fits_every_caption_and_prompt(pair):
    model = pair[1]
    ctx = model.cfg.text.context_length
    texts = [p for a in CAPTION_ATTRIBUTES for ps in class_prompts(a).values() for p in ps]
    world = ToyWorld(300, seed=0, caption_keep={a: 1.0 for a in CAPTION_ATTRIBUTES})
    texts += [world[i]["caption"] for i in range(len(world))]
    tokens = model.tokenize(texts)
    assert tokens.shape[1] == ctx
    eot = 49407
    assert bool((tokens == eot).any(dim=1).all()), "a caption was truncated"


def test_images_to_tensor_matches_preprocess(pair):
    images = ToyWorld(3, seed=1).images()
    x = toy_model.images_to_tensor(images)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 32, 32)
    via_pil = torch.stack([pair[1].preprocess(Image.fromarray(im)) for im in images])
    assert torch.allclose(x, via_pil, atol=1e-6)
    assert torch.equal(toy_model.images_to_tensor(images[0]), x[:1])
    with pytest.raises(TypeError):
        toy_model.images_to_tensor(images.astype(np.float32))


def test_missing_weights_say_how_to_retrain(tmp_path):
    with pytest.raises(FileNotFoundError, match="hookedclip toy train"):
        toy_model.load_toy_model(weights=tmp_path)


@pytest.mark.parametrize("attribute", EVAL_ATTRIBUTES)
def test_accuracy_on_a_fresh_sample_matches_the_card(fresh_eval, card, attribute):
    got, claimed = fresh_eval["accuracy"][attribute], card["accuracy"][attribute]
    chance = fresh_eval["chance"][attribute]
    # Three standard errors of the difference of two independent binomial estimates (the card's
    # figure is itself measured on card["eval"]["n"] images).
    margin = 3 * np.hypot(binomial_se(claimed, N_FRESH), binomial_se(claimed, card["eval"]["n"]))
    assert got >= claimed - margin, (
        f"{attribute}: {100 * got:.1f}% on {N_FRESH} fresh images < card {100 * claimed:.1f}% "
        f"(n={card['eval']['n']}) - margin {100 * margin:.1f} points\n{format_table(fresh_eval)}"
    )
    above_chance = 3 * binomial_se(chance, N_FRESH)
    assert got > chance + above_chance, f"{attribute}: {100 * got:.1f}% is not above chance {100 * chance:.1f}%"


def test_model_card_is_generated_from_card_json(card):
    """MODEL_CARD.md is exactly what the training recipe writes from card.json: no hand edits."""
    shipped = (toy_model.weights_dir() / "MODEL_CARD.md").read_text()
    assert shipped == model_card_markdown(card)
    assert "Quality bar" in shipped and f"{100 * card['accuracy']['shape']:.1f}%" in shipped


def test_spurious_worst_group_is_clearly_below_average(fresh_eval, card):
    sp = fresh_eval["spurious"]
    assert set(sp["groups"]) == {"circle on stripes", "circle on dots", "square on stripes", "square on dots"}
    # Worst group is a minority (class on the other class's texture) group ...
    worst = min(sp["groups"], key=sp["groups"].get)
    assert worst in ("circle on dots", "square on stripes"), format_table(fresh_eval)
    # ... and clearly below the average (n/4 = 500 images per group).
    assert sp["average"] - sp["worst_group"] >= 0.05, format_table(fresh_eval)
    assert card["spurious"]["gap"] >= 0.05
    assert sp["average"] > 0.6  # shape is learned, not only texture
