"""Conversion from Hugging Face ``transformers`` CLIP models (and LLaVA's vision tower).

HF's CLIP differs from open_clip only in layout: ``pre_layrnorm`` is ``ln_pre``,
``post_layernorm`` is applied to the pooled class token (``final_ln_after_pool``), q/k/v/out
are separate biased projections (HF scales q after projecting, we scale inside attention:
the same function), and OpenAI checkpoints use QuickGELU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hookedclip.config import CLIPConfig, TextConfig, VisionConfig
from hookedclip.loading.common import attach_io, block_state, check_layer_norm_eps
from hookedclip.model import HookedCLIP

_ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu"}


def from_hf(model: nn.Module, device: str | torch.device = "cpu", tokenizer: Any = None) -> HookedCLIP:
    """Build a :class:`HookedCLIP` from ``CLIPModel``, ``CLIPVisionModel``,
    ``CLIPVisionModelWithProjection`` or ``LlavaForConditionalGeneration`` (its vision tower;
    ``cfg.extra`` records the layer and strategy LLaVA reads its features with)."""
    import transformers as tf

    extra: dict[str, Any] = {}
    text_model = text_projection = vision_projection = None
    if isinstance(model, tf.LlavaForConditionalGeneration) or type(model).__name__.startswith("Llava"):
        extra = {
            "llava_vision_feature_layer": model.config.vision_feature_layer,
            "llava_vision_feature_select_strategy": model.config.vision_feature_select_strategy,
        }
        model = _llava_tower(model)
    if isinstance(model, tf.CLIPModel):
        vision_model, vision_projection = model.vision_model, model.visual_projection
        text_model, text_projection = model.text_model, model.text_projection
    elif isinstance(model, tf.CLIPVisionModelWithProjection):
        vision_model, vision_projection = model.vision_model, model.visual_projection
    elif isinstance(model, tf.CLIPVisionModel):
        vision_model = model
    else:
        raise NotImplementedError(
            f"{type(model).__name__} is not supported: from_hf takes CLIPModel, CLIPVisionModel, "
            "CLIPVisionModelWithProjection or LlavaForConditionalGeneration with a CLIP vision tower"
        )
    vision_cfg, state = _convert_vision(vision_model, vision_projection)
    text_cfg = None
    if text_model is not None:
        text_cfg, text_state = _convert_text(text_model, text_projection)
        state.update(text_state)
    logit_scale = getattr(model, "logit_scale", None)
    state["logit_scale"] = logit_scale.detach().reshape(()) if logit_scale is not None else torch.tensor(4.6052)
    name = getattr(model.config, "_name_or_path", "") or model.config.model_type
    cfg = CLIPConfig(vision=vision_cfg, text=text_cfg, model_name=name, source="hf", extra=extra)
    hooked = HookedCLIP(cfg)
    hooked.load_state_dict({k: v.detach() for k, v in state.items()})
    hooked = hooked.to(device=device, dtype=next(model.parameters()).dtype).eval()
    attach_io(hooked)
    if tokenizer is not None:
        hooked.tokenizer = tokenizer
    return hooked


def _llava_tower(model: nn.Module) -> nn.Module:
    tower = getattr(model, "vision_tower", None) or getattr(getattr(model, "model", None), "vision_tower", None)
    if tower is None:
        raise NotImplementedError(f"{type(model).__name__}: no vision_tower found")
    return tower


def _unwrap(module: nn.Module, inner: str) -> nn.Module:
    """transformers 4 wraps the transformer in ``.vision_model`` / ``.text_model``; 5 does not."""
    while not hasattr(module, "embeddings") and hasattr(module, inner):
        module = getattr(module, inner)
    return module


def _act(config) -> str:
    act = config.hidden_act
    if act not in _ACTS:
        raise NotImplementedError(f"hidden_act {act!r} is not supported (gelu, quick_gelu are)")
    return _ACTS[act]


def _layers_state(prefix: str, layers, heads: int) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        state.update(block_state(
            f"{prefix}blocks.{i}.",
            n_heads=heads,
            ln1=(layer.layer_norm1.weight, layer.layer_norm1.bias),
            ln2=(layer.layer_norm2.weight, layer.layer_norm2.bias),
            qkv=[(p.weight, p.bias) for p in (attn.q_proj, attn.k_proj, attn.v_proj)],
            out=(attn.out_proj.weight, attn.out_proj.bias),
            fc1=(mlp.fc1.weight, mlp.fc1.bias),
            fc2=(mlp.fc2.weight, mlp.fc2.bias),
        ))
    return state


def _layer_norm_eps(layers) -> set[float]:
    return {ln.eps for layer in layers for ln in (layer.layer_norm1, layer.layer_norm2)}


def _convert_vision(vision_model: nn.Module, projection: nn.Module | None) -> tuple[VisionConfig, dict[str, Tensor]]:
    vision_model = _unwrap(vision_model, "vision_model")
    config = vision_model.config
    if config.model_type not in ("clip_vision_model", "clip"):
        raise NotImplementedError(f"vision tower of type {config.model_type!r} is not supported (CLIP ViT towers are)")
    emb = vision_model.embeddings
    layers = list(vision_model.encoder.layers)
    cfg = VisionConfig(
        width=config.hidden_size,
        layers=len(layers),
        heads=config.num_attention_heads,
        d_mlp=config.intermediate_size,
        output_dim=None if projection is None else projection.out_features,
        act_fn=_act(config),
        image_size=config.image_size,
        patch_size=config.patch_size,
        in_channels=config.num_channels,
        class_token=True,
        ln_pre=True,
        pool_type="tok",
        final_ln_after_pool=True,
        patch_bias=emb.patch_embedding.bias is not None,
    )
    norms = {vision_model.pre_layrnorm.eps, vision_model.post_layernorm.eps}
    check_layer_norm_eps(cfg, norms | _layer_norm_eps(layers), "HF vision tower")
    s: dict[str, Tensor] = {
        "visual.embed.W": emb.patch_embedding.weight,
        "visual.class_embedding": emb.class_embedding,
        "visual.pos_embed": emb.position_embedding.weight,
        "visual.ln_pre.w": vision_model.pre_layrnorm.weight,
        "visual.ln_pre.b": vision_model.pre_layrnorm.bias,
        "visual.ln_post.w": vision_model.post_layernorm.weight,
        "visual.ln_post.b": vision_model.post_layernorm.bias,
    }
    if emb.patch_embedding.bias is not None:
        s["visual.embed.b"] = emb.patch_embedding.bias
    if projection is not None:
        s["visual.W_proj"] = projection.weight.T
        s["visual.b_proj"] = projection.bias if projection.bias is not None else torch.zeros(projection.out_features)
    s.update(_layers_state("visual.", layers, cfg.heads))
    return cfg, s


def _convert_text(text_model: nn.Module, projection: nn.Module) -> tuple[TextConfig, dict[str, Tensor]]:
    text_model = _unwrap(text_model, "text_model")
    config = text_model.config
    layers = list(text_model.encoder.layers)
    legacy_eos = config.eos_token_id == 2  # configs before transformers PR #24773 pool at argmax
    cfg = TextConfig(
        width=config.hidden_size,
        layers=len(layers),
        heads=config.num_attention_heads,
        d_mlp=config.intermediate_size,
        output_dim=projection.out_features,
        act_fn=_act(config),
        context_length=config.max_position_embeddings,
        vocab_size=config.vocab_size,
        causal=True,
        pool_type="argmax" if legacy_eos else "eos",
        eos_token_id=None if legacy_eos else config.eos_token_id,
        proj_bias=projection.bias is not None,
    )
    check_layer_norm_eps(cfg, {text_model.final_layer_norm.eps} | _layer_norm_eps(layers), "HF text tower")
    emb = text_model.embeddings
    s: dict[str, Tensor] = {
        "text.W_E": emb.token_embedding.weight,
        "text.W_pos": emb.position_embedding.weight,
        "text.ln_final.w": text_model.final_layer_norm.weight,
        "text.ln_final.b": text_model.final_layer_norm.bias,
        "text.W_proj": projection.weight.T,
        "text.b_proj": projection.bias if projection.bias is not None else torch.zeros(projection.out_features),
    }
    s.update(_layers_state("text.", layers, cfg.heads))
    return cfg, s
