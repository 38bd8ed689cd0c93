"""The shipped toy LLaVA: a real LlavaForConditionalGeneration on the toy CLIP's tower."""

from __future__ import annotations

import math

import pytest
import torch

from hookedclip import HookedCLIP, ablation
from hookedclip.methods import llava
from hookedclip.methods.llava.toy_model import ANSWERS, QUESTIONS, labels_of, to_hf_vision_tower, toy_images
from hookedclip.toy.world import ToyWorld


@pytest.fixture(scope="module")
def toy():
    return llava.toy()


@pytest.fixture(scope="module")
def held_out():
    world = ToyWorld(300, seed=11, split="test")
    return toy_images(world.images()), world.attributes()


def accuracy(toy, images, attrs, attribute) -> float:
    answers, _ = toy.answer(images, attribute)
    return float((answers == labels_of(attrs, attribute)).float().mean())


def test_the_tower_round_trips_through_transformers():
    clip = HookedCLIP.from_pretrained("toy")
    back = HookedCLIP.from_hf(to_hf_vision_tower(clip))
    ours = clip.state_dict()
    for name, tensor in back.state_dict().items():
        if name.startswith("visual.") and name in ours and "proj" not in name:
            assert torch.equal(tensor, ours[name]), name


def test_hooked_toy_clip_is_the_identity_inside(toy, held_out):
    images = held_out[0][:16]
    plain = toy.next_token_logits(images, "shape")
    with llava.hooked_vision_tower(toy.model, toy.clip):
        hooked = toy.next_token_logits(images, "shape")
    assert (plain - hooked).abs().max() < 1e-5


def test_held_out_accuracy_meets_the_card(toy, held_out):
    images, attrs = held_out
    for attribute in ("color", "texture", "background"):
        assert accuracy(toy, images, attrs, attribute) >= 0.9, attribute
    # shape: within a few points of a linear probe on the same patch features (card, canonical test set: 0.880 vs 0.828)
    assert accuracy(toy, images, attrs, "shape") >= toy.card["shape_probe_accuracy"] - 0.05
    assert set(toy.card["accuracy"]) == set(QUESTIONS)


def test_answers_are_words_of_the_question(toy, held_out):
    answers, logp = toy.answer(held_out[0][:8], "color")
    assert logp.shape == (8, len(ANSWERS["color"])) and (logp <= 0).all()
    assert ((answers >= 0) & (answers < len(ANSWERS["color"]))).all()
    with pytest.raises(ValueError, match="unknown attribute 'size'"):
        toy.prompt("size", 1)


def test_ablating_shape_heads_changes_shape_answers_more_than_colour(toy):
    """Heads are chosen by their effect on shape answers on one image set and measured on
    another, so the margin is not a selection artefact; the margin must exceed three standard
    errors of the difference of the two drops."""
    choose, measure = ToyWorld(200, seed=21, split="test"), ToyWorld(400, seed=22, split="test")
    reference = toy_images(ToyWorld(200, seed=23, split="train").images())
    heads = [f"L{layer}H{head}" for layer in range(3) for head in range(4)]  # the heads below the layer read
    with llava.hooked_vision_tower(toy.model, toy.clip) as hooked:
        means = ablation.component_means(hooked, reference, components=heads, mode="total")
        images, attrs = toy_images(choose.images()), choose.attributes()
        drops = {}
        for head in heads:
            with ablation.mean_ablate(hooked, [head], means, mode="total"):
                drops[head] = accuracy(toy, images, attrs, "shape")
        shape_heads = sorted(heads, key=drops.get)[:4]
        images, attrs = toy_images(measure.images()), measure.attributes()
        clean = {a: accuracy(toy, images, attrs, a) for a in ("shape", "color")}
        with ablation.mean_ablate(hooked, shape_heads, means, mode="total"):
            ablated = {a: accuracy(toy, images, attrs, a) for a in ("shape", "color")}
    n = len(attrs)
    shape_drop, colour_drop = clean["shape"] - ablated["shape"], clean["color"] - ablated["color"]
    se = math.sqrt(sum(p * (1 - p) / n for p in (*clean.values(), *ablated.values())))
    assert shape_drop - colour_drop > 3 * se, (shape_heads, clean, ablated)


def test_attention_and_mlp_shares_on_the_toy(toy, held_out):
    """Measured, not assumed: on the toy, the class token's stream is written mostly by attention
    (its summed attention share is more than twice its MLP share), while the patch tokens LLaVA
    reads are written about equally, MLPs slightly ahead; the MLPs' weight relative to attention
    is far larger for patch tokens than for the class token, the direction of the paper's finding."""
    stack = llava.decompose_features(toy.clip, held_out[0][:128], layer=-2)
    shares = llava.norm_shares(stack, layer=3)
    patch, cls = shares.total("patch"), shares.total("cls")
    assert shares.dominant("cls") == "attn" and cls["attn"] > 2 * cls["mlp"]
    assert shares.dominant("patch") == "mlp"
    assert patch["mlp"] / patch["attn"] > 2 * cls["mlp"] / cls["attn"]


def test_attention_ablation_spares_llava_colour_answers_but_not_clip(toy, held_out):
    """On the toy, mean-ablating the attention of blocks 0-2 leaves the LLaVA's colour answers
    almost intact, while CLIP's class-token readout of the same stream loses colour: what the
    patch tokens carry and what the class token reads differ."""
    images, attrs = held_out
    reference = toy_images(ToyWorld(200, seed=32, split="train").images())
    effects = llava.layer_sweep(
        toy.model,
        toy.clip,
        toy.answer_fn("color"),
        images,
        labels_of(attrs, "color"),
        [3],
        kinds=("attn",),
        reference=reference,
        classifier=toy.classifier("color"),
    )
    ablated = effects.row("attn<3")
    assert ablated["llm_low"] > ablated["clip_high"]  # intervals apart
    assert effects.row("none")["clip_accuracy"] > 0.9


def test_a_sith_edit_is_a_selection_like_any_other(toy, held_out):
    """Any engine context can be a row of the table: here SITH's suppression of every head's two
    strongest singular channels in blocks 0-2, measured on the LLaVA's shape answers and CLIP's
    shape readout of the same stream; the row equals answering inside the context by hand."""
    from hookedclip.methods import sith

    images, attrs = held_out
    labels = labels_of(attrs, "shape")
    channels = {(f"L{layer}H{head}", i): 0.0 for layer in range(3) for head in range(4) for i in range(2)}
    effects = llava.ablation_effects(
        toy.model,
        toy.clip,
        toy.answer_fn("shape"),
        images,
        labels,
        {"sith": lambda hooked: sith.edit(hooked, channels)},
        means={},
        classifier=toy.classifier("shape"),
    )
    with llava.hooked_vision_tower(toy.model, toy.clip) as hooked, sith.edit(hooked, channels):
        by_hand = accuracy(toy, images, attrs, "shape")
    assert effects.row("sith")["llm_accuracy"] == pytest.approx(by_hand)
    assert effects.row("sith")["llm_accuracy"] < effects.row("none")["llm_accuracy"]


def test_the_shipped_card_is_generated_and_every_accuracy_has_its_interval():
    import json
    import re
    from pathlib import Path

    from hookedclip.methods.llava import toy_train

    weights = Path(toy_train.__file__).parent / "weights"
    card = (weights / "MODEL_CARD.md").read_text()
    assert card == toy_train.model_card(json.loads((weights / "card.json").read_text()))
    accuracies = re.findall(r"\d+\.\d% \[\d+\.\d, \d+\.\d\]", card)
    assert len(accuracies) == 5  # four questions and the shape probe
