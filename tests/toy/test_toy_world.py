"""Tests of the procedural toy world (hookedclip.toy.world): determinism, mask/image
agreement, geometry, captions, prompts, vocabulary and the spurious (Waterbirds-style) split."""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookedclip.toy import world as W
from hookedclip.toy.world import (
    ATTRIBUTE_WORDS,
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    SHAPES,
    SIZES,
    TEXTURES,
    SpuriousSpec,
    ToyAttributes,
    ToyWorld,
    caption,
    class_prompts,
    render,
    render_batch,
    sample_attributes,
    vocabulary,
)

ATTRS = ("shape", "color", "texture", "background", "size", "position")


def make(
    shape="circle", color="red", texture="plain", background="gray", size="small", cx=0.5, cy=0.5, radius=0.22
) -> ToyAttributes:
    return ToyAttributes(shape, color, texture, background, size, cx, cy, radius)


def dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """8-connected binary dilation of bool [H, W] by ``steps`` pixels."""
    for _ in range(steps):
        p = np.pad(mask, 1)
        h, w = mask.shape
        mask = np.zeros_like(mask)
        for dy, dx in itertools.product(range(3), range(3)):
            mask = mask | p[dy : dy + h, dx : dx + w]
    return mask


def erode(mask: np.ndarray) -> np.ndarray:
    """8-connected binary erosion by one pixel."""
    return ~dilate(~mask)


def background_of(attrs: ToyAttributes, image_size: int = 32) -> np.ndarray:
    """The image's background alone: the same attributes with the shape moved off-image."""
    return render(dataclasses.replace(attrs, cx=10.0, cy=10.0), image_size)[0]


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_items_different_seed_different_images():
    a, b, c = ToyWorld(24, seed=7), ToyWorld(24, seed=7), ToyWorld(24, seed=8)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert np.array_equal(x["image"], y["image"])
        assert np.array_equal(x["mask"], y["mask"])
        for key in ("caption", "mentioned", "attributes", "labels"):
            assert x[key] == y[key]
    differ = [not np.array_equal(a[i]["image"], c[i]["image"]) for i in range(len(a))]
    assert all(differ)


def test_splits_use_different_streams():
    train, test = ToyWorld(16, seed=0, split="train"), ToyWorld(16, seed=0, split="test")
    assert train.attributes() != test.attributes()


def test_item_alone_equals_item_from_batch_in_any_order():
    world = ToyWorld(40, seed=3)
    batch = world.images()
    order = np.random.default_rng(0).permutation(len(world))
    for i in order[:15]:
        alone = ToyWorld(40, seed=3)[int(i)]
        assert alone["index"] == i
        assert np.array_equal(alone["image"], batch[i])
    assert np.array_equal(world.images(order), batch[order])
    assert world.attributes([5, 2]) == [world[5]["attributes"], world[2]["attributes"]]


def test_item_schema_and_indexing():
    world = ToyWorld(5, seed=1)
    item = world[-1]
    assert item["index"] == 4 and item["group"] == -1
    assert item["image"].shape == (32, 32, 3) and item["image"].dtype == np.uint8
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == bool
    assert item["labels"] == item["attributes"].labels()
    with pytest.raises(IndexError):
        world[5]
    assert len(list(world)) == 5  # iteration via __getitem__ stops at IndexError


def test_labels_index_the_attribute_tuples():
    attrs = make(shape="star", color="orange", texture="dots", background="brown", size="large")
    labels = attrs.labels()
    assert SHAPES[labels["shape"]] == "star" and COLORS[labels["color"]] == "orange"
    assert TEXTURES[labels["texture"]] == "dots" and BACKGROUNDS[labels["background"]] == "brown"
    assert SIZES[labels["size"]] == "large"
    with pytest.raises(ValueError):
        make(shape="dog")


# --------------------------------------------------------------------------- rendering


def test_palette_contrast():
    """Every shape colour is far from every background tone and from every other colour."""
    tones = [t for pair in BACKGROUND_RGB.values() for t in pair]
    for rgb in COLOR_RGB.values():
        assert min(np.linalg.norm(np.subtract(rgb, t)) for t in tones) > 100
    for a, b in itertools.combinations(COLOR_RGB.values(), 2):
        assert np.linalg.norm(np.subtract(a, b)) > 70


def test_mask_interior_is_shape_colour_and_far_outside_is_background():
    world = ToyWorld(300, seed=11)
    images, masks = render_batch(world.attributes())
    for attrs, image, mask in zip(world.attributes(), images, masks):
        interior = erode(mask)
        assert interior.any()
        assert (image[interior] == COLOR_RGB[attrs.color]).all()
        # Thin star tips are < 50% covered up to ~1.5 px beyond the mask, hence 2 px.
        outside = image[~dilate(mask, 2)]
        tones = np.array(BACKGROUND_RGB[attrs.background])
        assert (outside[:, None, :] == tones[None]).all(-1).any(-1).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_mask_is_where_the_shape_dominates(seed):
    """Mask pixels (>= 50% covered) are nearer the shape colour than the local background,
    other pixels nearer the background (up to rounding at exactly 50%)."""
    attrs = sample_attributes(np.random.default_rng(seed), 1)[0]
    image, mask = render(attrs)
    bg = background_of(attrs).astype(int)
    col = np.array(COLOR_RGB[attrs.color])
    d_col = np.abs(image.astype(int) - col).sum(-1)
    d_bg = np.abs(image.astype(int) - bg).sum(-1)
    clear = np.abs(d_col - d_bg) > 3
    assert np.array_equal(mask[clear], (d_col < d_bg)[clear])
    assert (image[d_bg == 0] == bg[d_bg == 0]).all()


@pytest.mark.parametrize("shape", ["circle", "square", "cross", "diamond", "star"])
def test_symmetric_shapes_are_centred_where_asked(shape):
    attrs = make(shape=shape, cx=0.41, cy=0.63, radius=0.2)
    _, mask = render(attrs)
    ys, xs = np.nonzero(mask)
    # Pixel (y, x) covers [x, x + 1): its centre is x + 0.5.
    assert abs(xs.mean() + 0.5 - 0.41 * 32) < 0.5
    if shape != "star":  # a 5-point star is not up-down symmetric
        assert abs(ys.mean() + 0.5 - 0.63 * 32) < 0.5


def test_circle_area_matches_geometry_and_scales_with_image_size():
    attrs = make(shape="circle", radius=0.35)
    area32, area64 = render(attrs, 32)[1].sum(), render(attrs, 64)[1].sum()
    assert abs(area32 - np.pi * (0.35 * 32) ** 2) < 0.04 * area32
    assert abs(area64 / area32 - 4) < 0.15


@pytest.mark.parametrize("shape", SHAPES)
def test_mask_area_increases_with_radius(shape):
    areas = [render(make(shape=shape, radius=r))[1].sum() for r in np.linspace(0.19, 0.40, 8)]
    assert all(b >= a for a, b in zip(areas, areas[1:]))
    assert areas[-1] > 2.5 * areas[0]


def test_large_masks_are_larger_than_small_on_average():
    world = ToyWorld(400, seed=2)
    attrs = world.attributes()
    areas = render_batch(attrs)[1].sum(axis=(1, 2))
    for shape in SHAPES:
        small = [a for a, t in zip(areas, attrs) if t.shape == shape and t.size == "small"]
        large = [a for a, t in zip(areas, attrs) if t.shape == shape and t.size == "large"]
        assert small and large and np.mean(large) > 1.8 * np.mean(small)


def test_every_shape_renders_on_every_texture():
    for shape, texture, background in itertools.product(SHAPES, TEXTURES, BACKGROUNDS):
        image, mask = render(make(shape=shape, texture=texture, background=background))
        assert image.shape == (32, 32, 3) and 30 < mask.sum() < 32 * 32
    # Textures differ from each other and (except plain) use both background tones.
    backgrounds = [background_of(make(texture=t)) for t in TEXTURES]
    for a, b in itertools.combinations(backgrounds, 2):
        assert not np.array_equal(a, b)
    for t, bg in zip(TEXTURES, backgrounds):
        assert len(np.unique(bg.reshape(-1, 3), axis=0)) == (1 if t == "plain" else 2)


@pytest.mark.parametrize("radius", [0.19, 0.31])
def test_distinct_shapes_give_distinct_masks(radius):
    masks = {s: render(make(shape=s, radius=radius))[1] for s in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        assert (masks[a] ^ masks[b]).sum() >= 15, (a, b)


def test_shapes_stay_inside_the_image():
    attributes = ToyWorld(200, seed=4).attributes()
    for attrs, mask in zip(attributes, render_batch(attributes)[1]):
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        assert 0 < attrs.cx - attrs.radius and attrs.cx + attrs.radius < 1


def test_position_names():
    assert make(cx=0.5, cy=0.5).position == "center"
    assert make(cx=0.3, cy=0.45).position == "left"
    assert make(cx=0.7, cy=0.55).position == "right"
    assert make(cx=0.45, cy=0.3).position == "top"  # y points down
    assert make(cx=0.55, cy=0.7).position == "bottom"
    # The name agrees with where the mask actually is.
    _, mask = render(make(cx=0.3, cy=0.5, radius=0.19))
    assert np.nonzero(mask)[1].mean() < 16


# --------------------------------------------------------------------------- captions


def attribute_words_in(text: str) -> dict[str, set[str]]:
    toks = set(tokens(text))
    return {a: {v for v, w in ATTRIBUTE_WORDS[a].items() if w in toks} for a in ATTRS}


def test_attribute_words_are_unique_across_attributes():
    words = [w for a in ATTRS for w in ATTRIBUTE_WORDS[a].values()]
    assert len(words) == len(set(words))
    assert not set(words) & set(vocabulary()["template"])


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    keep=st.none() | st.fixed_dictionaries({a: st.sampled_from([0.0, 0.5, 1.0]) for a in ATTRS}),
)
def test_caption_mentions_exactly_the_kept_attributes(seed, keep):
    rng = np.random.default_rng(seed)
    attrs = sample_attributes(rng, 1)[0]
    text, mentioned = caption(attrs, rng, keep)
    assert mentioned and mentioned <= set(ATTRS)
    found = attribute_words_in(text)
    for a in ATTRS:
        expected = {getattr(attrs, a)} if a in mentioned else set()
        assert found[a] == expected, (text, a)
    assert set(tokens(text)) <= set(vocabulary()["all"]), text
    if keep is not None:
        assert all(keep[a] > 0 for a in mentioned - {"shape"})
        assert all(a in mentioned for a in ATTRS if keep[a] == 1.0)


def test_caption_falls_back_to_shape_and_respects_keep_rates():
    rng = np.random.default_rng(0)
    attrs = sample_attributes(rng, 1)[0]
    assert caption(attrs, rng, dict.fromkeys(ATTRS, 0.0))[1] == {"shape"}
    counts = dict.fromkeys(ATTRS, 0)
    for a in sample_attributes(rng, 2000):
        for name in caption(a, rng)[1]:
            counts[name] += 1
    for name, p in W.DEFAULT_KEEP.items():
        assert abs(counts[name] / 2000 - p) < 0.04, name


def test_caption_uses_several_templates():
    rng = np.random.default_rng(1)
    keep_all = dict.fromkeys(ATTRS, 1.0)
    texts = {caption(make(), rng, keep_all)[0] for _ in range(200)}
    assert len(texts) >= 8


@pytest.mark.parametrize("attribute", ATTRS)
def test_class_prompts_mention_only_their_value(attribute):
    prompts = class_prompts(attribute)
    assert set(prompts) == set(ATTRIBUTE_WORDS[attribute])
    for value, texts in prompts.items():
        assert len(texts) >= 3 and len(set(texts)) == len(texts)
        for text in texts:
            found = attribute_words_in(text)
            assert found[attribute] == {value}, text
            assert not any(found[a] for a in ATTRS if a != attribute), text
            assert set(tokens(text)) <= set(vocabulary()["all"]), text
    assert "a photo of a triangle." in class_prompts("shape")["triangle"]
    with pytest.raises(ValueError):
        class_prompts("mood")


def test_vocabulary():
    vocab = vocabulary()
    attribute_words = {w for a in ATTRS for w in vocab[a]}
    distractors = set(vocab["distractors"])
    assert 20 <= len(distractors) <= 50 and len(distractors) == len(vocab["distractors"])
    assert not distractors & attribute_words
    assert not distractors & set(vocab["template"])
    assert len(vocab["all"]) == len(set(vocab["all"]))
    assert set(vocab["all"]) == attribute_words | distractors | set(vocab["template"])
    assert vocabulary() == vocab
    assert vocab["texture"] == ["plain", "striped", "dotted", "checkered"]


# --------------------------------------------------------------------------- spurious split


def test_group_names_follow_the_documented_numbering():
    spec = SpuriousSpec()
    expected = ["circle on stripes", "circle on dots", "square on stripes", "square on dots"]
    assert spec.group_names() == expected
    with pytest.raises(ValueError):
        SpuriousSpec(classes=("circle", "circle"))


def test_spurious_train_is_aligned_at_p_aligned():
    world = ToyWorld(4000, seed=0, spurious=SpuriousSpec())
    groups = world.groups()
    aligned = np.isin(groups, [0, 3]).mean()  # class i on texture i
    assert abs(aligned - 0.95) < 0.02
    assert abs((groups // 2).mean() - 0.5) < 0.03  # classes balanced
    assert set(np.unique(groups)) == {0, 1, 2, 3}


def test_spurious_items_agree_with_their_group():
    spec = SpuriousSpec(classes=("star", "heart"), textures=("checker", "plain"), p_aligned=0.7)
    world = ToyWorld(60, seed=5, spurious=spec)
    for i in range(len(world)):
        item = world[i]
        cls, tex = divmod(item["group"], 2)
        assert item["attributes"].shape == spec.classes[cls]
        assert item["attributes"].texture == spec.textures[tex]
    assert np.array_equal(world.groups(), [world[i]["group"] for i in range(len(world))])


def test_balanced_test_set_has_exactly_n_over_4_per_group():
    world = ToyWorld(400, seed=1, split="test", spurious=SpuriousSpec(), group_balanced=True)
    groups = world.groups()
    assert np.array_equal(groups, np.arange(400) % 4)
    assert np.array_equal(np.bincount(groups), [100] * 4)
    shapes = {a.shape for a in world.attributes()}
    assert shapes == {"circle", "square"}
    with pytest.raises(ValueError):
        ToyWorld(8, group_balanced=True)


def test_unbalanced_test_split_is_not_spuriously_aligned():
    world = ToyWorld(2000, seed=2, split="test", spurious=SpuriousSpec())
    assert abs(np.isin(world.groups(), [0, 3]).mean() - 0.5) < 0.05


# --------------------------------------------------------------------------- contact sheet


def test_contact_sheet_writes_a_png(tmp_path):
    path = tmp_path / "sheet.png"
    sheet = W.contact_sheet(ToyWorld(10, seed=0), n=10, path=str(path), cols=4, scale=2)
    tile = 32 * 2 + 2
    assert sheet.shape == (3 * tile, 4 * tile, 3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert np.array_equal(np.asarray(image), sheet)  # lossless: the file holds exactly the sheet
