"""Conversion from open_clip: the converted model computes the source model's function."""

from __future__ import annotations

import gc

import open_clip
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hookedclip import HookedCLIP
from tests.conftest import randomize_, random_tokens, rel_err, tiny_open_clip

TOL = 1e-5


def assert_equivalent(source, model: HookedCLIP, n_images: int = 2, seed: int = 0) -> None:
    cfg = model.cfg
    size = cfg.vision.image_size
    images = torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(seed))
    tokens = random_tokens(3, cfg.text.context_length, cfg.text.vocab_size, seed)
    with torch.no_grad():
        assert rel_err(source.encode_image(images), model.encode_image(images)) < TOL
        assert rel_err(source.encode_text(tokens), model.encode_text(tokens)) < TOL


def test_tiny_model_matches(tiny_pair):
    assert_equivalent(*tiny_pair)


@pytest.mark.parametrize(
    "variant",
    [
        dict(pool_type="avg"),
        dict(final_ln_after_pool=True),
        dict(pool_type="avg", final_ln_after_pool=True),
        dict(ls_init_value=0.5),
        dict(no_ln_pre=True),
        dict(quick_gelu=True),
        dict(image_size=24),
        dict(block_type="custom"),
    ],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_variants_match(variant):
    source = tiny_open_clip(seed=3, **variant)
    model = HookedCLIP.from_open_clip(source)
    assert_equivalent(source, model)


def test_variants_really_differ():
    """The variant tests mean something only if the options change the function."""
    images = torch.randn(2, 3, 16, 16)
    base = tiny_open_clip(seed=3)
    with torch.no_grad():
        ref = base.encode_image(images)
        for variant in (dict(pool_type="avg"), dict(ls_init_value=0.5), dict(quick_gelu=True)):
            other = tiny_open_clip(seed=3, **variant)
            assert rel_err(ref, other.encode_image(images)) > 1e-3


@settings(max_examples=12, deadline=None)
@given(
    layers=st.integers(1, 3),
    heads=st.sampled_from([1, 2, 4]),
    head_width=st.sampled_from([4, 8]),
    patch=st.sampled_from([2, 4, 8]),
    grid=st.integers(2, 4),
    pool=st.sampled_from(["tok", "avg"]),
    quick_gelu=st.booleans(),
    final_ln_after_pool=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_tiny_configs_match(layers, heads, head_width, patch, grid, pool, quick_gelu, final_ln_after_pool, seed):
    source = tiny_open_clip(
        seed=seed,
        layers=layers,
        width=heads * head_width,
        head_width=head_width,
        patch_size=patch,
        image_size=patch * grid,
        quick_gelu=quick_gelu,
        pool_type=pool,
        final_ln_after_pool=final_ln_after_pool,
    )
    assert_equivalent(source, HookedCLIP.from_open_clip(source), seed=seed)


def test_named_model_and_force_image_size():
    """A model name goes through open_clip.create_model, kwargs included."""
    model = HookedCLIP.from_open_clip("ViT-S-32", force_image_size=64)
    assert model.cfg.vision.image_size == 64 and model.cfg.model_name == "ViT-S-32"
    assert model.cfg.vision.n_tokens == 1 + (64 // 32) ** 2
    assert model.tokenizer is not None and model.preprocess is not None


@pytest.mark.large
@pytest.mark.parametrize(
    "name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-H-14-quickgelu"]
)
def test_seed_architectures_match(name):
    torch.manual_seed(0)
    source = randomize_(open_clip.create_model(name).eval())
    model = HookedCLIP.from_open_clip(source)
    assert model.cfg.vision.act_fn == ("quick_gelu" if "quickgelu" in name else "gelu")
    assert_equivalent(source, model, n_images=1)
    del source, model
    gc.collect()


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "option, words",
    [
        (dict(attentional_pool=True), "attentional pooling"),
        (dict(qk_norm=True), "qk_norm"),
        (dict(scaled_cosine_attn=True), "scaled cosine"),
        (dict(scale_fc=True), "scale_fc"),
    ],
)
def test_unsupported_options_are_named(option, words):
    source = tiny_open_clip(**option)
    with pytest.raises(NotImplementedError, match=words):
        HookedCLIP.from_open_clip(source)


def test_non_vit_tower_is_refused():
    source = open_clip.CLIP(16, vision_cfg=dict(layers=(1, 1, 1, 1), width=8, image_size=32), text_cfg=dict(context_length=8, vocab_size=50, width=16, heads=2, layers=1))
    with pytest.raises(NotImplementedError, match="ModifiedResNet"):
        HookedCLIP.from_open_clip(source)


def test_unknown_name_suggests():
    with pytest.raises(ValueError, match="ViT-B-32"):
        HookedCLIP.from_open_clip("ViT-B-33")


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError, match="laion2b_s34b_b79k"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained="no-such-tag")


def test_unloadable_tag_names_tag_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"laion2b_s34b_b79k.*cache"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")


def test_local_checkpoint_file(tmp_path):
    """A pretrained path (what users do offline) loads those exact weights."""
    source = open_clip.create_model("ViT-S-32")
    randomize_(source, seed=5)
    path = tmp_path / "ckpt.pt"
    torch.save(source.state_dict(), path)
    model = HookedCLIP.from_open_clip("ViT-S-32", pretrained=str(path))
    assert_equivalent(source.eval(), model, n_images=1)
