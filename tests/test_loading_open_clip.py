"""Conversion from open_clip: the converted model computes the source model's function."""

from __future__ import annotations

import gc
import re

import open_clip
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import random_tokens, randomize_, rel_err, tiny_open_clip

from hookedclip import HookedCLIP

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


def test_weights_are_copied_into_ordinary_parameters():
    """Built on the meta device and filled by copies: every parameter is a real, contiguous,
    trainable tensor of the source's dtype, and editing it leaves the source alone."""
    source = tiny_open_clip(seed=4)
    model = HookedCLIP.from_open_clip(source)
    assert all(p.device.type == "cpu" and p.is_contiguous() and p.requires_grad for p in model.parameters())
    before = source.visual.transformer.resblocks[0].mlp.c_fc.weight.clone()
    with torch.no_grad():
        model.visual.blocks[0].mlp.W_in.zero_()
    assert torch.equal(source.visual.transformer.resblocks[0].mlp.c_fc.weight, before)
    half = HookedCLIP.from_open_clip(tiny_open_clip(seed=4).to(torch.bfloat16))
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


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
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-H-14-quickgelu"])
def test_seed_architectures_match(name):
    torch.manual_seed(0)
    source = randomize_(open_clip.create_model(name).eval())
    model = HookedCLIP.from_open_clip(source)
    assert model.cfg.vision.act_fn == ("quick_gelu" if "quickgelu" in name else "gelu")
    assert_equivalent(source, model, n_images=1)
    del source, model
    gc.collect()


def vit_b16_clip(seed: int = 0, image_size: int = 224, **vision_kw) -> open_clip.CLIP:
    """open_clip's ViT-B-16 image tower (options in ``vision_kw``) with a tiny text tower: the
    variants below change only the image side, so the text tower is kept cheap."""
    torch.manual_seed(seed)
    vision = {**open_clip.get_model_config("ViT-B-16")["vision_cfg"], "image_size": image_size, **vision_kw}
    text = dict(context_length=12, vocab_size=100, width=32, heads=4, layers=1)
    return randomize_(open_clip.CLIP(512, vision_cfg=vision, text_cfg=text), seed).eval()


def assert_image_equivalent(source, model: HookedCLIP, seed: int = 0) -> None:
    size = model.cfg.vision.image_size
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert rel_err(source.encode_image(images), model.encode_image(images)) < TOL


@pytest.mark.large
@pytest.mark.parametrize(
    "variant",
    [dict(pool_type="avg"), dict(final_ln_after_pool=True), dict(ls_init_value=0.1)],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_vit_b16_variants_match(variant):
    source = vit_b16_clip(seed=11, **variant)
    if "ls_init_value" in variant:
        with torch.no_grad():  # randomize_ left the gains near one; make layer scale matter
            for name, p in source.visual.named_parameters():
                if name.endswith("gamma"):
                    p.mul_(torch.rand(p.shape, generator=torch.Generator().manual_seed(len(name))) + 0.1)
    model = HookedCLIP.from_open_clip(source)
    assert (model.cfg.vision.width, model.cfg.vision.heads, model.cfg.vision.layers) == (768, 12, 12)
    assert_image_equivalent(source, model)


@pytest.mark.large
def test_vit_b16_interpolated_positions_match(tmp_path):
    """A 224 px ViT-B-16 checkpoint loaded by open_clip into a 256 px model: open_clip
    interpolates the 14x14 position grid to 16x16; the converted model follows it."""
    path = tmp_path / "vit_b16_224.pt"
    saved = vit_b16_clip(seed=12)
    torch.save(saved.state_dict(), path)
    source = vit_b16_clip(seed=13, image_size=256)
    open_clip.load_checkpoint(source, str(path))
    pos = source.visual.positional_embedding
    assert pos.shape == (1 + 16**2, 768)
    assert torch.equal(pos[0], saved.visual.positional_embedding[0])  # the class position, from the checkpoint
    del saved
    model = HookedCLIP.from_open_clip(source)
    assert model.cfg.vision.n_tokens == 1 + 16**2
    assert_image_equivalent(source, model)


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


def _with_activation(module: torch.nn.Module, tower: str) -> open_clip.CLIP:
    source = tiny_open_clip()
    blocks = source.visual.transformer.resblocks if tower == "visual" else source.transformer.resblocks
    blocks[0].mlp.gelu = module
    return source


@pytest.mark.parametrize("tower", ["visual", "text"])
@pytest.mark.parametrize(
    "activation, words",
    [(torch.nn.GELU(approximate="tanh"), r"GELU\(approximate='tanh'\)"), (torch.nn.SiLU(), r"SiLU.*no SwiGLU")],
    ids=["tanh-gelu", "silu"],
)
def test_unsupported_activation_is_named(activation, words, tower):
    with pytest.raises(NotImplementedError, match=f"MLP activation {words}"):
        HookedCLIP.from_open_clip(_with_activation(activation, tower))


def test_tanh_gelu_from_open_clip_config_is_refused():
    """The way a config asks for it (``act_kwargs``), not only a swapped module."""
    source = tiny_open_clip(act_kwargs={"approximate": "tanh"})
    with pytest.raises(NotImplementedError, match="approximate='tanh'"):
        HookedCLIP.from_open_clip(source)


TINY_VISION = dict(layers=1, width=32, head_width=8, patch_size=4, image_size=16)
TINY_TEXT = dict(context_length=12, vocab_size=100, width=32, heads=4, layers=1)


def test_text_class_token_is_refused():
    source = open_clip.CustomTextCLIP(16, vision_cfg=TINY_VISION, text_cfg=dict(TINY_TEXT, embed_cls=True))
    with pytest.raises(NotImplementedError, match="text cls_emb"):
        HookedCLIP.from_open_clip(source)


def test_text_pad_mask_is_refused():
    from open_clip.transformer import TextTransformer

    source = open_clip.CustomTextCLIP(16, vision_cfg=TINY_VISION, text_cfg=TINY_TEXT)
    source.text = TextTransformer(output_dim=16, no_causal_mask=True, use_pad_mask=True, **TINY_TEXT)
    with pytest.raises(NotImplementedError, match="text use_pad_mask"):
        HookedCLIP.from_open_clip(source)


def test_hf_text_tower_is_refused(tmp_path):
    """open_clip's HFTextEncoder, built offline from a tiny local BERT config."""
    import transformers

    transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    ).save_pretrained(tmp_path)
    text = dict(hf_model_name=str(tmp_path), hf_model_pretrained=False, hf_proj_type="linear")
    source = open_clip.CustomTextCLIP(16, vision_cfg=TINY_VISION, text_cfg=text)
    with pytest.raises(NotImplementedError, match="text tower HFTextEncoder.*Hugging Face text encoder"):
        HookedCLIP.from_open_clip(source)


@pytest.mark.parametrize(
    "option, words",
    [
        (dict(image_size=(16, 24)), r"non-square image_size \(16, 24\)"),
        (dict(patch_size=(4, 8)), r"non-square patch_size \(4, 8\)"),
    ],
    ids=["image_size", "patch_size"],
)
def test_non_square_sizes_are_refused(option, words):
    with pytest.raises(NotImplementedError, match=words):
        HookedCLIP.from_open_clip(tiny_open_clip(**option))


def test_non_vit_tower_is_refused():
    source = open_clip.CLIP(
        16,
        vision_cfg=dict(layers=(1, 1, 1, 1), width=8, image_size=32),
        text_cfg=dict(context_length=8, vocab_size=50, width=16, heads=2, layers=1),
    )
    with pytest.raises(NotImplementedError, match="ModifiedResNet"):
        HookedCLIP.from_open_clip(source)


def test_unknown_name_suggests():
    with pytest.raises(ValueError, match="ViT-B-32"):
        HookedCLIP.from_open_clip("ViT-B-33")


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError, match="laion2b_s34b_b79k"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained="no-such-tag")


def _offline_hub(monkeypatch, cache) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))


def test_unloadable_tag_names_tag_and_cache(monkeypatch, tmp_path):
    """Our message (not open_clip's): the tag, the directory searched, what to do offline."""
    _offline_hub(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError) as info:
        HookedCLIP.from_open_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    message = str(info.value)
    assert message.startswith("could not load pretrained weights ViT-B-32 / 'laion2b_s34b_b79k'")
    assert f"Hugging Face hub cache ({tmp_path})" in message
    assert "pass its file path as pretrained=" in message
    # An explicit cache_dir is where open_clip looks instead, and the message says so.
    elsewhere = tmp_path / "weights"
    with pytest.raises(RuntimeError, match=re.escape(f"Hugging Face hub cache ({elsewhere})")):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(elsewhere))


def test_local_checkpoint_file(tmp_path):
    """A pretrained path (what users do offline) loads those exact weights, also into another
    image size (open_clip interpolates the position grid)."""
    source = open_clip.create_model("ViT-S-32")
    randomize_(source, seed=5)
    path = tmp_path / "ckpt.pt"
    torch.save(source.state_dict(), path)
    model = HookedCLIP.from_open_clip("ViT-S-32", pretrained=str(path))
    assert_equivalent(source.eval(), model, n_images=1)

    resized = open_clip.create_model("ViT-S-32", pretrained=str(path), force_image_size=288).eval()
    assert resized.visual.positional_embedding.shape[0] == 1 + 9**2
    model = HookedCLIP.from_open_clip("ViT-S-32", pretrained=str(path), force_image_size=288)
    assert model.cfg.vision.image_size == 288 and model.cfg.pretrained == str(path)
    torch.testing.assert_close(model.visual.pos_embed, resized.visual.positional_embedding, rtol=0, atol=0)
    assert_image_equivalent(resized, model)  # the text tower is the one compared above


@pytest.mark.parametrize(
    "transform_kw",
    [
        dict(),
        dict(
            image_resize_mode="squash",
            image_interpolation="bilinear",
            image_mean=(0.5, 0.4, 0.3),
            image_std=(0.2, 0.3, 0.4),
        ),
        dict(image_resize_mode="longest", force_image_size=96),
    ],
    ids=["default", "squash-bilinear-mean-std", "longest-96px"],
)
def test_preprocess_is_open_clips_eval_transform(transform_kw):
    """On a non-square image (so resizing and cropping matter), ``model.preprocess`` gives
    exactly open_clip's own evaluation transform for that model."""
    import numpy as np
    from PIL import Image

    source, _, open_clip_eval = open_clip.create_model_and_transforms("ViT-S-32", **transform_kw)
    model = HookedCLIP.from_open_clip(source)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 230, 3), dtype=np.uint8))
    expected = open_clip_eval(image)
    assert expected.shape == (3, model.cfg.vision.image_size, model.cfg.vision.image_size)
    torch.testing.assert_close(model.preprocess(image), expected, rtol=0, atol=0)
