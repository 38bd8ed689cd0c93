"""Conversion from Hugging Face ``transformers`` CLIP models (and LLaVA's CLIP vision tower).

The converted model computes the same function as the source (features agree to float
rounding); options that we do not implement raise ``NotImplementedError`` naming them.

HF's CLIP differs from open_clip only in layout:

* ``pre_layrnorm`` is ``ln_pre``; ``post_layernorm`` is applied to the pooled class token
  only (``pool_type="tok"``, ``final_ln_after_pool=True``);
* q/k/v/out are separate biased ``Linear`` layers; HF scales q after projecting, we scale
  the scores inside attention (the same function);
* the patch convolution has no bias; position embeddings are an ``nn.Embedding``;
* the text tower pools the first ``eos_token_id`` token, except for legacy configs with
  ``eos_token_id == 2`` (written before transformers PR #24773), which pool at the largest
  token id (``argmax``, as OpenAI and open_clip);
* ``visual_projection`` / ``text_projection`` have no bias; OpenAI checkpoints use QuickGELU.

HF's ``output_hidden_states=True`` gives ``hidden_states[0]`` = the input of block 0 (after
``pre_layrnorm``) and ``hidden_states[i]`` = the output of block ``i - 1``:
:func:`hidden_state_hook_name` names the matching hook points, and
:func:`llava_feature_hook_names` the ones a converted LLaVA tower's language model reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hookedclip.config import CLIPConfig, TextConfig, VisionConfig
from hookedclip.loading.common import attach_io, block_state, check_layer_norm_eps
from hookedclip.model.hooked import HookedCLIP
from hookedclip.names import act_name

SUPPORTED = (
    "CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection, and LLaVA models "
    "(LlavaForConditionalGeneration, LlavaModel) whose vision tower is a CLIP ViT (CLIPVisionModel)"
)
_ACTIVATIONS = ("gelu", "quick_gelu")  # HF names = ours: exact erf GELU, x * sigmoid(1.702 x)


def from_hf(
    model: nn.Module,
    device: str | torch.device = "cpu",
    tokenizer: Any = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> HookedCLIP:
    """Build a :class:`HookedCLIP` from a Hugging Face model.

    Args:
        model: a ``CLIPModel`` (both towers, projections, ``logit_scale``), a
            ``CLIPVisionModel`` (image tower without projection: ``encode_image`` returns the
            ``post_layernorm``-ed class token, HF's ``pooler_output``), a
            ``CLIPVisionModelWithProjection``, or a LLaVA model: its CLIP vision tower is
            converted (no projection; the multimodal projector and language model are not),
            and ``cfg.extra`` records ``llava_vision_feature_layer`` and
            ``llava_vision_feature_select_strategy`` from the LLaVA config.
        device: where the converted model lives; it keeps the source's dtype.
        tokenizer: optional. A ``transformers`` tokenizer is wrapped so that
            ``model.tokenize(texts)`` returns ids ``[batch, context_length]`` (padded to the
            text tower's context length, truncated keeping the end token); any other callable
            ``list[str] -> LongTensor`` is used as is. Without one, text towers with the CLIP
            BPE vocabulary get open_clip's offline tokenizer.
        image_mean, image_std: normalisation for ``model.preprocess`` (default: OpenAI CLIP's,
            which HF CLIP and LLaVA-1.5 checkpoints use). HF keeps them in the image processor,
            not in the model, so they cannot be read from ``model``.

    Weights are copied: editing the converted model leaves ``model`` unchanged.
    """
    cfg, state = convert_hf(model)
    if image_mean is not None:
        cfg.image_mean = _triple(image_mean, "image_mean")
    if image_std is not None:
        cfg.image_std = _triple(image_std, "image_std")
    dtype = state["visual.embed.W"].dtype
    # Built on the meta device and filled with copies of the source tensors: no random
    # initialisation, no float32 detour for half-precision sources (LLaVA towers are large).
    with torch.device("meta"):
        hooked = HookedCLIP(cfg)
    copies = {
        k: v.detach().to(device=device, dtype=dtype, memory_format=torch.contiguous_format, copy=True)
        for k, v in state.items()
    }
    hooked.load_state_dict(copies, assign=True)
    hooked.eval()
    attach_io(hooked)
    if tokenizer is not None:
        hooked.tokenizer = _tokenizer_fn(tokenizer, cfg.text)
    return hooked


def convert_hf(model: nn.Module) -> tuple[CLIPConfig, dict[str, Tensor]]:
    """Config and state dict (HookedCLIP layout) of a supported Hugging Face model (see
    :func:`from_hf`). The state dict holds the source tensors (or views of them)."""
    import transformers as tf

    name = _model_name(model)
    extra: dict[str, Any] = {}
    where = ""
    if _is_llava(model):
        extra = {
            "llava_vision_feature_layer": _plain(model.config.vision_feature_layer),
            "llava_vision_feature_select_strategy": model.config.vision_feature_select_strategy,
        }
        where = f" (the vision tower of {type(model).__name__})"
        model = _llava_tower(model)

    text_model = text_projection = vision_projection = None
    if isinstance(model, tf.CLIPModel):
        vision_model, vision_projection = model.vision_model, model.visual_projection
        text_model, text_projection = model.text_model, model.text_projection
    elif isinstance(model, tf.CLIPVisionModelWithProjection):
        vision_model, vision_projection = model.vision_model, model.visual_projection
    elif isinstance(model, tf.CLIPVisionModel):
        vision_model = model
    else:
        raise NotImplementedError(_unsupported_message(model, where))

    vision_cfg, state = _convert_vision(vision_model, vision_projection)
    text_cfg = None
    if text_model is not None:
        text_cfg, text_state = _convert_text(text_model, text_projection)
        state.update(text_state)
    cfg = CLIPConfig(vision=vision_cfg, text=text_cfg, model_name=name, source="hf", extra=extra)
    logit_scale = getattr(model, "logit_scale", None)
    state["logit_scale"] = (
        logit_scale.detach().reshape(()) if logit_scale is not None else torch.tensor(cfg.init_logit_scale)
    )
    return cfg, state


def hidden_state_hook_name(index: int, n_layers: int, tower: str = "visual") -> str:
    """The hook point whose activation equals HF's ``hidden_states[index]``
    (``output_hidden_states=True``, ``n_layers + 1`` entries; negative indices count from the
    end as in Python): ``blocks.0.hook_resid_pre`` for 0, ``blocks.{i-1}.hook_resid_post`` for i."""
    n = n_layers + 1
    if not -n <= index < n:
        raise IndexError(f"hidden_states index {index} is out of range for {n_layers} layers ({n} entries)")
    index %= n
    return act_name("resid_pre", 0, tower) if index == 0 else act_name("resid_post", index - 1, tower)


def llava_feature_hook_names(cfg: CLIPConfig) -> list[str]:
    """The hook points holding the vision features a LLaVA model reads (one per entry of its
    ``vision_feature_layer``; concatenated along ``d_model`` when several). With strategy
    ``"default"`` LLaVA drops the class token (position 0); with ``"full"`` it keeps it."""
    if "llava_vision_feature_layer" not in cfg.extra:
        raise ValueError(
            f"this model ({cfg.model_name}, from {cfg.source}) was not converted from a LLaVA model: "
            "cfg.extra has no llava_vision_feature_layer"
        )
    layer = cfg.extra["llava_vision_feature_layer"]
    layers = [layer] if isinstance(layer, int) else list(layer)
    return [hidden_state_hook_name(i, cfg.vision.layers) for i in layers]


# ---------------------------------------------------------------------------- dispatch
def _is_llava(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return (
        type(model).__name__.startswith("Llava")
        and hasattr(config, "vision_feature_layer")
        and hasattr(config, "vision_feature_select_strategy")
    )


def _llava_tower(model: nn.Module) -> nn.Module:
    # transformers >= 4.52 (and 5.x): LlavaForConditionalGeneration.model.vision_tower;
    # LlavaModel and older versions: .vision_tower.
    for owner in (model, getattr(model, "model", None)):
        tower = getattr(owner, "vision_tower", None)
        if isinstance(tower, nn.Module):
            return tower
    raise NotImplementedError(
        f"{type(model).__name__}: no vision_tower found (looked at .vision_tower, .model.vision_tower)"
    )


def _unsupported_message(model: Any, where: str) -> str:
    cls = type(model).__name__
    msg = f"{cls}{where} is not supported by from_hf; supported: {SUPPORTED}"
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if cls.startswith("CLIPText"):
        msg += ". A text-only model cannot be converted: HookedCLIP needs an image tower (convert the CLIPModel)"
    elif model_type is not None:
        msg += f". Its config has model_type {model_type!r}; only CLIP ViT vision towers ('clip_vision_model') are converted"
    return msg


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or type(model).__name__


def _plain(value: Any) -> Any:
    """Config values as JSON-friendly Python (``vision_feature_layer`` may be a list or tuple)."""
    return value if isinstance(value, int) else [int(v) for v in value]


def _triple(values: Sequence[float], what: str) -> tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise ValueError(f"{what} must have 3 values (one per RGB channel), got {len(out)}")
    return out  # type: ignore[return-value]


def _tokenizer_fn(tokenizer: Any, text: TextConfig | None) -> Callable[[list[str]], Tensor]:
    if text is None:
        raise ValueError("a tokenizer was given, but the converted model has no text tower")
    from transformers import PreTrainedTokenizerBase

    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    context_length = text.context_length

    def tokenize(texts: list[str]) -> Tensor:
        batch = tokenizer(
            list(texts), padding="max_length", max_length=context_length, truncation=True, return_tensors="pt"
        )
        return batch["input_ids"].long()

    return tokenize


# ---------------------------------------------------------------------------- towers
def _unwrap(module: nn.Module, inner: str) -> nn.Module:
    """transformers 4 wraps the transformer in ``.vision_model`` / ``.text_model``; 5 does not."""
    while not hasattr(module, "embeddings") and hasattr(module, inner):
        module = getattr(module, inner)
    return module


def _act(config: Any, where: str) -> str:
    act = config.hidden_act
    if act not in _ACTIVATIONS:
        raise NotImplementedError(f"{where}: hidden_act {act!r} is not supported ({', '.join(_ACTIVATIONS)} are)")
    return act


def _layers_state(prefix: str, layers: list[nn.Module], heads: int) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        state.update(
            block_state(
                f"{prefix}blocks.{i}.",
                n_heads=heads,
                ln1=(layer.layer_norm1.weight, layer.layer_norm1.bias),
                ln2=(layer.layer_norm2.weight, layer.layer_norm2.bias),
                qkv=[(p.weight, p.bias) for p in (attn.q_proj, attn.k_proj, attn.v_proj)],
                out=(attn.out_proj.weight, _bias(attn.out_proj)),
                fc1=(mlp.fc1.weight, _bias(mlp.fc1)),
                fc2=(mlp.fc2.weight, _bias(mlp.fc2)),
            )
        )
    return state


def _bias(linear: nn.Linear) -> Tensor:
    if linear.bias is not None:
        return linear.bias
    return torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device)


def _projection(prefix: str, projection: nn.Linear) -> dict[str, Tensor]:
    return {f"{prefix}W_proj": projection.weight.T, f"{prefix}b_proj": _bias(projection)}


def _layer_norm_eps(layers: list[nn.Module]) -> set[float]:
    return {ln.eps for layer in layers for ln in (layer.layer_norm1, layer.layer_norm2)}


def _convert_vision(vision_model: nn.Module, projection: nn.Linear | None) -> tuple[VisionConfig, dict[str, Tensor]]:
    vision_model = _unwrap(vision_model, "vision_model")
    config = vision_model.config
    emb = vision_model.embeddings
    conv = emb.patch_embedding
    layers = list(vision_model.encoder.layers)
    cfg = VisionConfig(
        width=config.hidden_size,
        layers=len(layers),
        heads=config.num_attention_heads,
        d_mlp=config.intermediate_size,
        output_dim=None if projection is None else projection.out_features,
        act_fn=_act(config, "HF CLIP vision tower"),
        image_size=config.image_size,
        patch_size=config.patch_size,
        in_channels=config.num_channels,
        class_token=True,
        ln_pre=True,
        pool_type="tok",
        final_ln_after_pool=True,
        patch_bias=conv.bias is not None,
    )
    norms = {vision_model.pre_layrnorm.eps, vision_model.post_layernorm.eps}
    check_layer_norm_eps(cfg, norms | _layer_norm_eps(layers), "HF CLIP vision tower")
    s: dict[str, Tensor] = {
        "visual.embed.W": conv.weight,
        "visual.class_embedding": emb.class_embedding,
        "visual.pos_embed": emb.position_embedding.weight,
        "visual.ln_pre.w": vision_model.pre_layrnorm.weight,
        "visual.ln_pre.b": vision_model.pre_layrnorm.bias,
        "visual.ln_post.w": vision_model.post_layernorm.weight,
        "visual.ln_post.b": vision_model.post_layernorm.bias,
    }
    if conv.bias is not None:
        s["visual.embed.b"] = conv.bias
    if projection is not None:
        s.update(_projection("visual.", projection))
    s.update(_layers_state("visual.", layers, cfg.heads))
    return cfg, s


def _convert_text(text_model: nn.Module, projection: nn.Linear) -> tuple[TextConfig, dict[str, Tensor]]:
    text_model = _unwrap(text_model, "text_model")
    config = text_model.config
    layers = list(text_model.encoder.layers)
    # CLIPTextModel.forward: eos_token_id == 2 (configs before PR #24773) pools at the largest
    # token id; any other id pools at its first occurrence.
    legacy = config.eos_token_id == 2
    cfg = TextConfig(
        width=config.hidden_size,
        layers=len(layers),
        heads=config.num_attention_heads,
        d_mlp=config.intermediate_size,
        output_dim=projection.out_features,
        act_fn=_act(config, "HF CLIP text tower"),
        context_length=config.max_position_embeddings,
        vocab_size=config.vocab_size,
        causal=True,
        pool_type="argmax" if legacy else "eos",
        eos_token_id=None if legacy else config.eos_token_id,
        proj_bias=projection.bias is not None,
    )
    check_layer_norm_eps(cfg, {text_model.final_layer_norm.eps} | _layer_norm_eps(layers), "HF CLIP text tower")
    emb = text_model.embeddings
    s: dict[str, Tensor] = {
        "text.W_E": emb.token_embedding.weight,
        "text.W_pos": emb.position_embedding.weight,
        "text.ln_final.w": text_model.final_layer_norm.weight,
        "text.ln_final.b": text_model.final_layer_norm.bias,
        **_projection("text.", projection),
    }
    s.update(_layers_state("text.", layers, cfg.heads))
    return cfg, s
