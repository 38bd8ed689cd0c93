"""Conversion from ``open_clip`` models.

The converted model computes the same function as the source (``encode_image`` and
``encode_text`` agree to float rounding); options that we do not implement raise
``NotImplementedError`` naming the option instead of converting approximately.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch
from torch import Tensor, nn

from hookedclip.config import CLIPConfig, TextConfig, VisionConfig
from hookedclip.loading.common import attach_io, block_state, check_layer_norm_eps
from hookedclip.model.hooked import HookedCLIP


def from_open_clip(
    model_or_name: Any,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    **create_kwargs: Any,
) -> HookedCLIP:
    """Build a :class:`HookedCLIP` from an open_clip model or model name.

    Args:
        model_or_name: an ``open_clip.CLIP`` / ``CustomTextCLIP`` instance, or a model name
            known to ``open_clip.list_models()`` (e.g. ``"ViT-B-16"``).
        pretrained: with a name, the pretrained tag or a local checkpoint path; ``None``
            gives random weights (open_clip's initialisation).
        device: where the converted model lives.
        create_kwargs: passed to ``open_clip.create_model`` (e.g. ``force_image_size``,
            ``force_quick_gelu``, ``precision``).
    """
    if isinstance(model_or_name, str):
        name = model_or_name
        source = create_open_clip(name, pretrained, **create_kwargs)
    else:
        if pretrained is not None or create_kwargs:
            raise ValueError("pretrained / create kwargs only apply when a model name is given")
        source = model_or_name
        name = getattr(source, "hookedclip_name", None) or type(source).__name__
    cfg, state = convert_open_clip(source)
    cfg.model_name, cfg.pretrained = name, pretrained
    dtype = next(source.parameters()).dtype
    # Built on the meta device and filled with copies of the source tensors: no random
    # initialisation of weights that are overwritten anyway (seconds at ViT-H sizes).
    with torch.device("meta"):
        model = HookedCLIP(cfg)
    copies = {
        k: v.to(device=device, dtype=dtype, memory_format=torch.contiguous_format, copy=True) for k, v in state.items()
    }
    model.load_state_dict(copies, assign=True)
    model.eval()
    attach_io(model)
    pre = getattr(source.visual, "preprocess_cfg", None)
    if pre:  # open_clip's own eval transform: also its interpolation and resize mode, not just mean / std
        from open_clip.transform import PreprocessCfg, image_transform_v2

        model.preprocess = image_transform_v2(PreprocessCfg(**pre), is_train=False)
    return model


def create_open_clip(name: str, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """``open_clip.create_model`` with errors that say what went wrong and what to do."""
    import open_clip

    known = open_clip.list_models()
    if name not in known and not name.startswith(("hf-hub:", "local-dir:")):
        close = difflib.get_close_matches(name, known, n=5)
        raise ValueError(f"unknown open_clip model {name!r}" + (f"; closest: {', '.join(close)}" if close else ""))
    if pretrained is not None and not os.path.exists(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ValueError(
                f"open_clip has no pretrained tag {pretrained!r} for {name}; known tags: "
                f"{', '.join(tags) or 'none'} (or pass a local checkpoint file)"
            )
    try:
        return open_clip.create_model(name, pretrained=pretrained, **kwargs).eval()
    except Exception as exc:
        if pretrained is None:
            raise
        cache = kwargs.get("cache_dir") or _hf_cache_dir()
        raise RuntimeError(
            f"could not load pretrained weights {name} / {pretrained!r}: {exc}. open_clip looks "
            f"for them in the Hugging Face hub cache ({cache}) and downloads them when "
            "there is network. Offline, copy the checkpoint to this machine and pass its file "
            "path as pretrained=..., or fill the cache on a machine with network."
        ) from exc


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return "~/.cache/huggingface/hub"


def convert_open_clip(model: nn.Module) -> tuple[CLIPConfig, dict[str, Tensor]]:
    """Config and state dict (HookedCLIP layout) of an open_clip CLIP model."""
    import open_clip

    if not isinstance(model, (open_clip.CLIP, open_clip.CustomTextCLIP)):
        raise NotImplementedError(
            f"open_clip model class {type(model).__name__} is not supported (CLIP and "
            "CustomTextCLIP with ViT towers are; CoCa's multimodal decoder is not)"
        )
    vision_cfg, state = _convert_vision(model.visual)
    text_cfg, text_state = _convert_text(model)
    state.update(text_state)
    state["logit_scale"] = model.logit_scale.detach().reshape(())
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    cfg = CLIPConfig(vision=vision_cfg, text=text_cfg, source="open_clip")
    if "mean" in pre:
        cfg.image_mean, cfg.image_std = tuple(pre["mean"]), tuple(pre["std"])
    return cfg, state


# ---------------------------------------------------------------------------- vision
def _convert_vision(v: nn.Module) -> tuple[VisionConfig, dict[str, Tensor]]:
    from open_clip.transformer import VisionTransformer

    if not isinstance(v, VisionTransformer):
        raise NotImplementedError(
            f"vision tower {type(v).__name__} is not supported: only ViT towers are "
            "(not ModifiedResNet, timm or other non-ViT towers)"
        )
    if v.attn_pool is not None:
        raise NotImplementedError("attentional pooling (attn_pooler) is not supported")
    if v.pool_type not in ("tok", "avg"):
        raise NotImplementedError(f"vision pool_type {v.pool_type!r} is not supported (tok, avg are)")
    image_size, patch_size = _square(v.image_size, "image_size"), _square(v.patch_size, "patch_size")
    blocks = list(v.transformer.resblocks)
    width = v.transformer.width
    heads = _n_heads(blocks[0])
    has_ln_pre = not isinstance(v.ln_pre, nn.Identity)
    cfg = VisionConfig(
        width=width,
        layers=len(blocks),
        heads=heads,
        d_mlp=blocks[0].mlp.c_fc.out_features,
        output_dim=None if v.proj is None else v.proj.shape[1],
        act_fn=_act_fn(blocks[0]),
        image_size=image_size,
        patch_size=patch_size,
        in_channels=v.conv1.in_channels,
        class_token=v.class_embedding is not None,
        ln_pre=has_ln_pre,
        pool_type=v.pool_type,
        final_ln_after_pool=bool(v.final_ln_after_pool),
        patch_bias=v.conv1.bias is not None,
    )
    norms = [v.ln_post, *([v.ln_pre] if has_ln_pre else [])]
    check_layer_norm_eps(cfg, {m.eps for m in norms} | _block_eps(blocks), "open_clip vision tower")
    s: dict[str, Tensor] = {"visual.embed.W": v.conv1.weight, "visual.pos_embed": v.positional_embedding}
    if v.conv1.bias is not None:
        s["visual.embed.b"] = v.conv1.bias
    if v.class_embedding is not None:
        s["visual.class_embedding"] = v.class_embedding
    if has_ln_pre:
        s["visual.ln_pre.w"], s["visual.ln_pre.b"] = v.ln_pre.weight, v.ln_pre.bias
    s["visual.ln_post.w"], s["visual.ln_post.b"] = v.ln_post.weight, v.ln_post.bias
    if v.proj is not None:
        s["visual.W_proj"] = v.proj
        s["visual.b_proj"] = torch.zeros(v.proj.shape[1], dtype=v.proj.dtype)
    for i, block in enumerate(blocks):
        s.update(_block(f"visual.blocks.{i}.", block, heads))
    return cfg, {k: t.detach() for k, t in s.items()}


def _square(size: Any, what: str) -> int:
    pair = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if pair[0] != pair[1]:
        raise NotImplementedError(f"non-square {what} {pair} is not supported")
    return int(pair[0])


# ---------------------------------------------------------------------------- text
def _convert_text(model: nn.Module) -> tuple[TextConfig | None, dict[str, Tensor]]:
    import open_clip
    from open_clip.transformer import TextTransformer

    if isinstance(model, open_clip.CustomTextCLIP):
        tower = model.text
        if not isinstance(tower, TextTransformer):
            raise NotImplementedError(
                f"text tower {type(tower).__name__} (e.g. a Hugging Face text encoder) is not supported"
            )
        if tower.cls_emb is not None:
            raise NotImplementedError("text cls_emb (CoCa-style appended class token) is not supported")
        if tower.use_pad_mask:
            raise NotImplementedError("text use_pad_mask (bidirectional padding mask) is not supported")
        pool_type, eos_id = tower.pool_type, getattr(tower, "eos_id", None)
    else:
        tower = model
        pool_type, eos_id = model.text_pool_type, getattr(model, "text_eos_id", None)
    if pool_type not in ("argmax", "eos", "first", "last"):
        raise NotImplementedError(f"text pool_type {pool_type!r} is not supported")
    blocks = list(tower.transformer.resblocks)
    heads = _n_heads(blocks[0])
    proj = tower.text_projection
    proj_w = proj.weight.T if isinstance(proj, nn.Linear) else proj
    proj_b = proj.bias if isinstance(proj, nn.Linear) and proj.bias is not None else None
    cfg = TextConfig(
        width=tower.transformer.width,
        layers=len(blocks),
        heads=heads,
        d_mlp=blocks[0].mlp.c_fc.out_features,
        output_dim=None if proj_w is None else proj_w.shape[1],
        act_fn=_act_fn(blocks[0]),
        context_length=tower.positional_embedding.shape[0],
        vocab_size=tower.token_embedding.num_embeddings,
        causal=tower.attn_mask is not None,
        pool_type=pool_type,
        eos_token_id=eos_id,
        proj_bias=proj_b is not None,
    )
    check_layer_norm_eps(cfg, {tower.ln_final.eps} | _block_eps(blocks), "open_clip text tower")
    s: dict[str, Tensor] = {
        "text.W_E": tower.token_embedding.weight,
        "text.W_pos": tower.positional_embedding,
        "text.ln_final.w": tower.ln_final.weight,
        "text.ln_final.b": tower.ln_final.bias,
    }
    if proj_w is not None:
        s["text.W_proj"] = proj_w
        s["text.b_proj"] = proj_b if proj_b is not None else torch.zeros(proj_w.shape[1], dtype=proj_w.dtype)
    for i, block in enumerate(blocks):
        s.update(_block(f"text.blocks.{i}.", block, heads))
    return cfg, {k: t.detach() for k, t in s.items()}


# ---------------------------------------------------------------------------- blocks
def _unsupported_block_options(block: nn.Module) -> list[str]:
    options = []
    attn = block.attn
    if getattr(attn, "scaled_cosine", False):
        options.append("scaled cosine attention")
    if getattr(attn, "scale_heads", False):
        options.append("per-head scaling (scale_heads)")
    for attr, label in (("ln_q", "qk_norm"), ("ln_inner", "inner attention norm (scale_attn_inner)")):
        if not isinstance(getattr(attn, attr, nn.Identity()), nn.Identity):
            options.append(label)
    if not isinstance(getattr(block, "ln_attn", nn.Identity()), nn.Identity):
        options.append("post-attention norm (scale_attn)")
    if not isinstance(getattr(block.mlp, "ln", nn.Identity()), nn.Identity):
        options.append("MLP inner norm (scale_fc)")
    if hasattr(block, "ln_1_kv"):
        options.append("cross attention")
    return options


def _n_heads(block: nn.Module) -> int:
    return block.attn.num_heads


def _act_fn(block: nn.Module) -> str:
    from open_clip.transformer import QuickGELU

    act = block.mlp.gelu
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return "gelu"
    raise NotImplementedError(f"MLP activation {act!r} is not supported (GELU and QuickGELU are; no SwiGLU)")


def _block_eps(blocks: list[nn.Module]) -> set[float]:
    return {ln.eps for b in blocks for ln in (b.ln_1, b.ln_2)}


def _layer_scale(module: nn.Module) -> Tensor | None:
    return None if isinstance(module, nn.Identity) else module.gamma


def _block(prefix: str, block: nn.Module, heads: int) -> dict[str, Tensor]:
    options = _unsupported_block_options(block)
    if options:
        raise NotImplementedError(f"open_clip block option(s) not supported: {', '.join(options)}")
    attn = block.attn
    biases = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None,) * 3
    qkv = list(zip(attn.in_proj_weight.chunk(3), biases))
    out_bias = attn.out_proj.bias
    if out_bias is None:
        out_bias = torch.zeros(attn.out_proj.out_features, dtype=attn.in_proj_weight.dtype)
    return block_state(
        prefix,
        n_heads=heads,
        ln1=(block.ln_1.weight, block.ln_1.bias),
        ln2=(block.ln_2.weight, block.ln_2.bias),
        qkv=qkv,
        out=(attn.out_proj.weight, out_bias),
        fc1=(block.mlp.c_fc.weight, block.mlp.c_fc.bias),
        fc2=(block.mlp.c_proj.weight, block.mlp.c_proj.bias),
        ls1=_layer_scale(block.ls_1),
        ls2=_layer_scale(block.ls_2),
    )
