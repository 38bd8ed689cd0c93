"""Weight-layout helpers shared by the loaders, and the tokenizer / preprocessing hook-up."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from hookedclip.config import TransformerConfig

# The BPE vocabulary of OpenAI CLIP, shared by open_clip's SimpleTokenizer and HF's
# CLIPTokenizer; a text tower with this vocabulary can use open_clip's offline tokenizer.
CLIP_BPE_VOCAB_SIZE = 49408


def split_heads_in(weight: Tensor, bias: Tensor | None, n_heads: int) -> tuple[Tensor, Tensor]:
    """One projection ``y = x @ weight.T + bias`` (torch ``Linear`` layout, ``weight [h*d_head,
    d_model]``) into TransformerLens layout ``W [h, d_model, d_head]``, ``b [h, d_head]``."""
    W = rearrange(weight, "(h e) m -> h m e", h=n_heads)
    b = torch.zeros(W.shape[0], W.shape[2], dtype=weight.dtype) if bias is None else bias.reshape(n_heads, -1)
    return W, b


def split_heads_out(weight: Tensor, n_heads: int) -> Tensor:
    """Output projection ``weight [d_model, h*d_head]`` (torch ``Linear``) to ``W_O [h, d_head, d_model]``."""
    return rearrange(weight, "m (h e) -> h e m", h=n_heads)


def block_state(
    prefix: str,
    *,
    n_heads: int,
    ln1: tuple[Tensor, Tensor],
    ln2: tuple[Tensor, Tensor],
    qkv: list[tuple[Tensor, Tensor | None]],
    out: tuple[Tensor, Tensor],
    fc1: tuple[Tensor, Tensor],
    fc2: tuple[Tensor, Tensor],
    ls1: Tensor | None = None,
    ls2: Tensor | None = None,
) -> dict[str, Tensor]:
    """The state dict of one :class:`~hookedclip.model.layers.TransformerBlock` from torch-layout
    tensors (``Linear`` weights ``[out, in]``). Layer-scale vectors ``ls1``/``ls2`` are folded
    into the attention and MLP output weights."""
    state: dict[str, Tensor] = {}
    state[f"{prefix}ln1.w"], state[f"{prefix}ln1.b"] = ln1
    state[f"{prefix}ln2.w"], state[f"{prefix}ln2.b"] = ln2
    for name, (w, b) in zip("QKV", qkv):
        state[f"{prefix}attn.W_{name}"], state[f"{prefix}attn.b_{name}"] = split_heads_in(w, b, n_heads)
    W_O, b_O = split_heads_out(out[0], n_heads), out[1]
    W_out, b_out = fc2[0].T, fc2[1]
    if ls1 is not None:
        W_O, b_O = W_O * ls1, b_O * ls1
    if ls2 is not None:
        W_out, b_out = W_out * ls2, b_out * ls2
    state[f"{prefix}attn.W_O"], state[f"{prefix}attn.b_O"] = W_O, b_O
    state[f"{prefix}mlp.W_in"], state[f"{prefix}mlp.b_in"] = fc1[0].T, fc1[1]
    state[f"{prefix}mlp.W_out"], state[f"{prefix}mlp.b_out"] = W_out, b_out
    return state


def check_layer_norm_eps(cfg: TransformerConfig, eps_values: set[float], where: str) -> None:
    if len(eps_values) > 1:
        raise NotImplementedError(f"{where}: LayerNorms with different eps {sorted(eps_values)}")
    if eps_values:
        cfg.ln_eps = eps_values.pop()


def attach_io(model) -> None:
    """Give ``model`` its tokenizer and preprocessing from the config, where they can be built
    offline: open_clip's BPE tokenizer for CLIP-vocabulary text towers, and open_clip's
    eval image transform for the image size, mean and std."""
    import open_clip

    cfg = model.cfg
    model.preprocess = open_clip.image_transform(
        cfg.vision.image_size, is_train=False, mean=cfg.image_mean, std=cfg.image_std
    )
    model.tokenizer = None
    text = cfg.text
    if text is None:
        return
    if cfg.source == "open_clip" and cfg.model_name in open_clip.list_models():
        try:
            model.tokenizer = open_clip.get_tokenizer(cfg.model_name, context_length=text.context_length)
            return
        except Exception:  # a tokenizer that needs the network: fall through to the BPE one
            pass
    if text.vocab_size == CLIP_BPE_VOCAB_SIZE:
        model.tokenizer = open_clip.SimpleTokenizer(context_length=text.context_length)
