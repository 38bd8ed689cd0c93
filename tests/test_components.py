"""components.select: the one parser every method chooses components with."""

from __future__ import annotations

import pytest

from hookedclip.components import ALL_COMPONENTS, ALL_HEADS, LAST_4_LAYERS, MLP, Embed, Head, all_components, select
from hookedclip.config import VisionConfig

CFG = VisionConfig(width=32, layers=6, heads=4, d_mlp=64)
EVERY_HEAD = [Head(l, h) for l in range(6) for h in range(4)]


def test_default_is_every_head_of_the_vision_tower(tiny_model):
    assert select(CFG) == select(CFG, ALL_HEADS) == select(CFG, None) == select(CFG, "heads") == EVERY_HEAD
    L, H = tiny_model.cfg.vision.layers, tiny_model.cfg.vision.heads
    every = [Head(l, h) for l in range(L) for h in range(H)]
    # a model, its config, its vision tower and the tower's config all give the same answer
    assert select(tiny_model) == select(tiny_model.cfg) == select(tiny_model.visual) == select(tiny_model.cfg.vision)
    assert select(tiny_model) == every


def test_specs():
    assert select(CFG, ALL_COMPONENTS) == all_components(6, 4)
    assert select(CFG, LAST_4_LAYERS) == [Head(l, h) for l in range(2, 6) for h in range(4)]
    assert select(CFG, "L-4--1") == select(CFG, "L2-5") == select(CFG, "L2-") == select(CFG, LAST_4_LAYERS)
    assert select(CFG, "L-1") == [Head(5, h) for h in range(4)]
    assert select(CFG, ["L3H1", "mlp-1", "embed", Head(0, 2)]) == [Head(3, 1), MLP(5), Embed(), Head(0, 2)]
    # request order kept, repeats dropped
    assert select(CFG, ["L1H3", "L1", "L1H0"]) == [Head(1, 3), Head(1, 0), Head(1, 1), Head(1, 2)]
    assert select(CFG, []) == []


@pytest.mark.parametrize(
    "spec, match",
    [
        ("L6", r"layer 6 does not exist; the model has layers 0\.\.5 \(-6\.\.-1 from the end\)"),
        ("L-7-", r"layer -7 does not exist; the model has layers 0\.\.5"),
        ("L2H4", r"head 4 does not exist; each layer has heads 0\.\.3"),
        ("mlp9", r"layers 0\.\.5"),
        ("L4-2", r"empty range.*layers 0\.\.5, heads 0\.\.3"),
        ("head7", r"cannot parse component 'head7' \(the model has layers 0\.\.5, heads 0\.\.3\)"),
    ],
)
def test_bad_specs_name_the_valid_range(spec, match):
    with pytest.raises(ValueError, match=match):
        select(CFG, spec)


def test_heads_only_and_bad_arguments():
    with pytest.raises(ValueError, match="mlp1, embed: not heads"):
        select(CFG, ["L1", "mlp1", "embed"], heads_only=True)
    with pytest.raises(TypeError, match="cannot parse 3"):
        select(CFG, [3])
    with pytest.raises(TypeError, match="layers and heads"):
        select(object(), "L1")


def test_text_tower(tiny_model):
    text = tiny_model.cfg.text
    assert select(tiny_model, "L-1", tower="text") == [Head(text.layers - 1, h) for h in range(text.heads)]
    with pytest.raises(ValueError, match="tower"):
        select(tiny_model, "L0", tower="audio")
