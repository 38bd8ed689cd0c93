"""Transformer components with a hook point on every intermediate tensor.

Weights use the TransformerLens layout (vectors are rows, matrices act on the right):
``W_Q, W_K, W_V: [n_heads, d_model, d_head]``, ``W_O: [n_heads, d_head, d_model]``,
``W_in: [d_model, d_mlp]``, ``W_out: [d_mlp, d_model]``.

When nothing is hooked, each component takes the fused path (packed QKV matmul,
``scaled_dot_product_attention``, one output matmul, ``F.layer_norm``), so a hooked model
with no hooks costs what the source library's forward costs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hookedclip.config import TransformerConfig
from hookedclip.hook_point import HookPoint

#: The residual stream (the width ``d_model`` at every position).
Resid = Float[Tensor, "batch pos d_model"]
#: One input of the residual-stream width per head (the split-input path).
PerHeadInput = Float[Tensor, "batch pos head d_model"]
#: Queries, keys or values: ``d_head`` per head.
PerHead = Float[Tensor, "batch pos head d_head"]


def add_hook_points(module: nn.Module, *names: str) -> None:
    """Give ``module`` one :class:`HookPoint` attribute per name, in this (forward) order."""
    for name in names:
        setattr(module, name, HookPoint())


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu}


class LayerNorm(nn.Module):
    """LayerNorm with ``hook_scale`` (σ = sqrt(var + eps), ``[..., 1]``) and ``hook_normalized``
    (the output, after the affine ``w``, ``b``)."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()
        self.folded = False  # True once fold_ln moved w, b into the weights that read the output

    def extra_repr(self) -> str:
        return f"d_model={self.w.shape[0]}, eps={self.eps}" + (", folded (w = 1, b = 0)" if self.folded else "")

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        if not self.hook_scale.is_active():
            out = F.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps)
            return self.hook_normalized(out)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale * self.w + self.b)


class Attention(nn.Module):
    """Multi-head self-attention with per-head weights and hooks.

    Hook shapes: ``hook_q/k/v/z`` ``[batch, pos, head, d_head]``; ``hook_attn_scores`` and
    ``hook_pattern`` ``[batch, head, q_pos, k_pos]``; ``hook_result`` ``[batch, pos, head,
    d_model]`` (each head's output, before ``b_O``; only computed while hooked or cached).
    """

    def __init__(self, cfg: TransformerConfig, causal: bool = False) -> None:
        super().__init__()
        h, d, dh = cfg.heads, cfg.width, cfg.d_head
        self.n_heads, self.d_head, self.causal = h, dh, causal
        self.W_Q = nn.Parameter(torch.empty(h, d, dh))
        self.W_K = nn.Parameter(torch.empty(h, d, dh))
        self.W_V = nn.Parameter(torch.empty(h, d, dh))
        self.W_O = nn.Parameter(torch.empty(h, dh, d))
        self.b_Q = nn.Parameter(torch.zeros(h, dh))
        self.b_K = nn.Parameter(torch.zeros(h, dh))
        self.b_V = nn.Parameter(torch.zeros(h, dh))
        self.b_O = nn.Parameter(torch.zeros(d))
        for w in (self.W_Q, self.W_K, self.W_V, self.W_O):
            nn.init.normal_(w, std=d**-0.5)
        add_hook_points(self, "hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z", "hook_result")
        self._packed: Tensor | None = None

    def _packed_qkv(self) -> tuple[Tensor, Tensor]:
        """QKV weights as one ``[3 * n_heads * d_head, d_model]`` matrix for ``F.linear``.

        Without autograd on the weights, ``W_Q``, ``W_K`` and ``W_V`` are made views into one
        packed tensor (re-packed whenever that sharing is broken: a reassignment, ``.to()``,
        a loaded copy), so a forward pass neither copies them nor keeps a second copy; in-place
        edits of ``W_Q`` write into the packed tensor. With autograd the packed matrix is built
        in the graph every call."""
        weights = (self.W_Q, self.W_K, self.W_V)
        bias = torch.cat([self.b_Q.flatten(), self.b_K.flatten(), self.b_V.flatten()])
        if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
            return torch.cat([w.permute(0, 2, 1).flatten(0, 1) for w in weights]), bias
        if not self._shares_packed():
            packed = torch.cat([w.detach().permute(0, 2, 1).flatten(0, 1) for w in weights])
            n = self.n_heads * self.d_head
            for i, w in enumerate(weights):
                w.data = packed[i * n : (i + 1) * n].view(self.n_heads, self.d_head, -1).transpose(1, 2)
            self._packed = packed
        return self._packed, bias

    def _shares_packed(self) -> bool:
        packed = self._packed
        if packed is None:
            return False
        step = self.n_heads * self.d_head * packed.shape[1] * packed.element_size()
        return all(
            w.dtype == packed.dtype and w.data_ptr() == packed.data_ptr() + i * step
            for i, w in enumerate((self.W_Q, self.W_K, self.W_V))
        )

    def _apply(self, fn, recurse: bool = True):
        self._packed = None  # .to() / .half() give the weights new storage: re-pack on the next forward
        return super()._apply(fn, recurse)

    def forward(self, x: Resid) -> Resid:
        batch, pos, _ = x.shape
        weight, bias = self._packed_qkv()
        qkv = F.linear(x, weight, bias).view(batch, pos, 3, self.n_heads, self.d_head)
        return self.attend(*qkv.unbind(2))

    def forward_split(self, q_input: PerHeadInput, k_input: PerHeadInput, v_input: PerHeadInput) -> Resid:
        """Attention from separate (already normalised) inputs per head, for path patching."""
        q, k, v = (
            torch.einsum("bphm,hme->bphe", x, W) + b
            for x, W, b in ((q_input, self.W_Q, self.b_Q), (k_input, self.W_K, self.b_K), (v_input, self.W_V, self.b_V))
        )
        return self.attend(q, k, v)

    def attend(self, q: PerHead, k: PerHead, v: PerHead) -> Resid:
        """The attention from queries, keys and values on: patterns, ``z`` and the output."""
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.hook_attn_scores.is_active() or self.hook_pattern.is_active():
            z = self._explicit_attention(q, k, v)
        else:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=self.causal
            ).transpose(1, 2)
        z = self.hook_z(z)
        if self.hook_result.is_active():
            result = self.hook_result(torch.einsum("bphe,hem->bphm", z, self.W_O))
            return result.sum(2) + self.b_O
        return F.linear(z.flatten(2), self.W_O.flatten(0, 1).T, self.b_O)

    def _explicit_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.d_head)
        if self.causal:
            n = scores.shape[-1]
            mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(scores.softmax(-1))
        return torch.einsum("bhqk,bkhe->bqhe", pattern, v)


class MLP(nn.Module):
    """Two-layer MLP; ``hook_pre`` / ``hook_post`` are ``[batch, pos, d_mlp]`` before / after
    the activation."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.width, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.width))
        self.b_out = nn.Parameter(torch.zeros(cfg.width))
        nn.init.normal_(self.W_in, std=cfg.width**-0.5)
        nn.init.normal_(self.W_out, std=cfg.d_mlp**-0.5)
        self.act = ACTIVATIONS[cfg.act_fn]
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Resid) -> Resid:
        pre = self.hook_pre(F.linear(x, self.W_in.T, self.b_in))
        post = self.hook_post(self.act(pre))
        return F.linear(post, self.W_out.T, self.b_out)


class TransformerBlock(nn.Module):
    """Pre-LN residual block: ``resid_mid = resid_pre + attn(ln1(resid_pre))``,
    ``resid_post = resid_mid + mlp(ln2(resid_mid))``. Layer scale, where a checkpoint has
    it, is folded into ``W_O, b_O`` and ``W_out, b_out`` at load.

    The input hooks cost nothing unless hooked or cached: ``hook_attn_in`` (the residual
    stream copied per head, ``[batch, pos, head, d_model]``, feeding queries, keys and values),
    ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` (each head's query, key and value
    input, for path patching) and ``hook_mlp_in`` (the MLP's input, ``[batch, pos, d_model]``).
    While one of the first four is active, ``ln1`` runs once per input (its hooks fire three
    times: queries, keys, values).
    """

    def __init__(self, cfg: TransformerConfig, causal: bool = False) -> None:
        super().__init__()
        self.ln1 = LayerNorm(cfg.width, cfg.ln_eps)
        self.attn = Attention(cfg, causal=causal)
        self.ln2 = LayerNorm(cfg.width, cfg.ln_eps)
        self.mlp = MLP(cfg)
        add_hook_points(
            self,
            "hook_resid_pre",
            "hook_attn_in",
            "hook_q_input",
            "hook_k_input",
            "hook_v_input",
            "hook_attn_out",
            "hook_resid_mid",
            "hook_mlp_in",
            "hook_mlp_out",
            "hook_resid_post",
        )

    def forward(self, x: Resid) -> Resid:
        resid_pre = self.hook_resid_pre(x)
        inputs = (self.hook_attn_in, self.hook_q_input, self.hook_k_input, self.hook_v_input)
        if any(hook.is_active() for hook in inputs):
            attn_out = self._split_attention(resid_pre)
        else:
            attn_out = self.attn(self.ln1(resid_pre))
        attn_out = self.hook_attn_out(attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.hook_mlp_in.is_active() else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)

    def _split_attention(self, resid_pre: Tensor) -> Tensor:
        per_head = resid_pre.unsqueeze(2).expand(-1, -1, self.attn.n_heads, -1)
        attn_in = self.hook_attn_in(per_head.clone()) if self.hook_attn_in.is_active() else per_head
        q, k, v = (
            hook(attn_in.clone()) if hook.is_active() else attn_in
            for hook in (self.hook_q_input, self.hook_k_input, self.hook_v_input)
        )
        return self.attn.forward_split(self.ln1(q), self.ln1(k), self.ln1(v))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``[batch, C, H, W] -> [batch, n_patches, d_model]``
    (row-major patch order, as open_clip and HF)."""

    def __init__(self, d_model: int, patch_size: int, in_channels: int = 3, bias: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.W = nn.Parameter(torch.empty(d_model, in_channels, patch_size, patch_size))
        self.b = nn.Parameter(torch.zeros(d_model)) if bias else None
        nn.init.normal_(self.W, std=(in_channels * patch_size**2) ** -0.5)

    def forward(self, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch n_patches d_model"]:
        x = F.conv2d(images, self.W, self.b, stride=self.patch_size)
        return x.flatten(2).transpose(1, 2)
