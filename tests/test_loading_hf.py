"""Conversion from Hugging Face transformers: CLIP, vision-only CLIP, and LLaVA's tower."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from hookedclip import HookedCLIP
from tests.conftest import rel_err

TOL = 1e-5


def _features(out) -> torch.Tensor:
    """transformers 5 returns tensors or output objects depending on the call."""
    if torch.is_tensor(out):
        return out
    return out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def vision_config(**kw) -> dict:
    cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
               patch_size=4, projection_dim=16, hidden_act="quick_gelu")
    cfg.update(kw)
    return cfg


def text_config(**kw) -> dict:
    cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=16, vocab_size=100, eos_token_id=99, bos_token_id=98, pad_token_id=0,
               projection_dim=16, hidden_act="gelu")
    cfg.update(kw)
    return cfg


def _ids(eos: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(3, 10, dtype=torch.long)
    for i, end in enumerate((3, 6, 9)):
        ids[i, :end] = torch.randint(3, 90, (end,), generator=gen)
        ids[i, end] = eos
    return ids


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
@pytest.mark.parametrize("eos", [99, 2], ids=["eos-id", "legacy-argmax"])
def test_clip_model_matches(act, eos):
    torch.manual_seed(0)
    config = tf.CLIPConfig(vision_config=vision_config(hidden_act=act), text_config=text_config(hidden_act=act, eos_token_id=eos), projection_dim=16)
    source = _randomize(tf.CLIPModel(config))
    model = HookedCLIP.from_hf(source)
    images = torch.randn(2, 3, 16, 16)
    ids = _ids(99)  # 99 is the largest id: argmax pooling finds it too
    with torch.no_grad():
        assert rel_err(_features(source.get_image_features(pixel_values=images)), model.encode_image(images)) < TOL
        assert rel_err(_features(source.get_text_features(input_ids=ids)), model.encode_text(ids)) < TOL
    assert model.cfg.text.pool_type == ("argmax" if eos == 2 else "eos")


def _check_hidden_states(hf_vision: torch.nn.Module, model: HookedCLIP, images: torch.Tensor, tol: float = TOL) -> None:
    with torch.no_grad():
        out = hf_vision(pixel_values=images, output_hidden_states=True)
        _, cache = model.run_with_cache(images, names_filter=lambda n: "resid" in n)
    hidden = out.hidden_states
    assert len(hidden) == len(model.visual.blocks) + 1
    assert rel_err(hidden[0], cache["resid_pre", 0]) < tol
    for layer in range(len(model.visual.blocks)):
        assert rel_err(hidden[layer + 1], cache["resid_post", layer]) < tol, layer


def test_vision_models_match_at_every_layer():
    torch.manual_seed(1)
    config = tf.CLIPVisionConfig(**vision_config())
    images = torch.randn(2, 3, 16, 16)
    plain = _randomize(tf.CLIPVisionModel(config), 1)
    model = HookedCLIP.from_hf(plain)
    assert model.text is None and model.visual.W_proj is None
    _check_hidden_states(plain, model, images)
    with torch.no_grad():
        assert rel_err(plain(pixel_values=images).pooler_output, model.encode_image(images)) < TOL
    projected = _randomize(tf.CLIPVisionModelWithProjection(config), 2)
    model = HookedCLIP.from_hf(projected)
    with torch.no_grad():
        assert rel_err(projected(pixel_values=images).image_embeds, model.encode_image(images)) < TOL


def _tiny_llava() -> tf.LlavaForConditionalGeneration:
    torch.manual_seed(3)
    config = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**vision_config()),
        text_config=tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                   intermediate_size=64, vocab_size=128),
        image_token_index=120,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return _randomize(tf.LlavaForConditionalGeneration(config), 3)


def test_llava_vision_tower_matches_and_records_its_feature_layer():
    llava = _tiny_llava()
    model = HookedCLIP.from_hf(llava)
    assert model.cfg.extra["llava_vision_feature_layer"] == -2
    assert model.cfg.extra["llava_vision_feature_select_strategy"] == "default"
    tower = llava.model.vision_tower if hasattr(llava, "model") else llava.vision_tower
    images = torch.randn(2, 3, 16, 16)
    _check_hidden_states(tower, model, images)
    # The patch features LLaVA reads: hidden_states[-2] without the CLS token.
    with torch.no_grad():
        read = tower(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:]
        _, cache = model.run_with_cache(images, names_filter="visual.blocks.0.hook_resid_post")
    assert rel_err(read, cache["resid_post", 0][:, 1:]) < TOL


@pytest.mark.large
def test_llava_1_5_tower_architecture_matches():
    """openai/clip-vit-large-patch14-336's architecture (LLaVA-1.5's tower), random weights."""
    torch.manual_seed(4)
    config = tf.CLIPVisionConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                                 image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    source = _randomize(tf.CLIPVisionModelWithProjection(config), 4)
    model = HookedCLIP.from_hf(source)
    images = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        assert rel_err(source(pixel_values=images).image_embeds, model.encode_image(images)) < TOL


@settings(max_examples=10, deadline=None)
@given(layers=st.integers(1, 3), heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([4, 8]),
       patch=st.sampled_from([2, 4]), grid=st.integers(2, 4), act=st.sampled_from(["gelu", "quick_gelu"]),
       seed=st.integers(0, 2**16))
def test_random_tiny_hf_vision_configs_match(layers, heads, head_dim, patch, grid, act, seed):
    torch.manual_seed(seed)
    config = tf.CLIPVisionConfig(**vision_config(hidden_size=heads * head_dim, num_hidden_layers=layers,
                                                 num_attention_heads=heads, intermediate_size=2 * heads * head_dim,
                                                 image_size=patch * grid, patch_size=patch, hidden_act=act))
    source = _randomize(tf.CLIPVisionModelWithProjection(config), seed)
    images = torch.randn(2, 3, patch * grid, patch * grid)
    with torch.no_grad():
        assert rel_err(source(pixel_values=images).image_embeds, HookedCLIP.from_hf(source).encode_image(images)) < TOL


def test_unsupported_inputs_are_named():
    with pytest.raises(NotImplementedError, match="Linear"):
        HookedCLIP.from_hf(torch.nn.Linear(2, 2))
    config = tf.CLIPVisionConfig(**vision_config(hidden_act="relu"))
    with pytest.raises(NotImplementedError, match="relu"):
        HookedCLIP.from_hf(tf.CLIPVisionModel(config))
