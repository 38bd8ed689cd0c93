"""The readout: how the final residual stream becomes the embedding, and the rows it gives.

The image embedding is ``e = LN_post(pool(r^L)) @ P + b_proj``. Pooling and LayerNorm are
handled by readout weights ``κ_q`` over query positions: the embedding before projection is
``γ ⊙ Σ_q κ_q (x_q − μ_q) + β``, with ``κ_q = π_q / σ_q`` (pool weights ``π``: one-hot CLS, or
uniform over patches for average pooling; ``σ_q`` from ``ln_post``) or ``κ_q = π_q / σ`` when
``ln_post`` follows the pooling. A component's row is its output read through these weights
and ``diag(γ) · P``; a head's is its attention re-weighted by ``κ`` over queries, times
``W_O · diag(γ) · P``, so no ``[batch, pos, head, d_model]`` tensor is ever formed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip.names import act_name

#: ``"cls"``: one row per component; ``"all"``: one per component and readout position.
Positions = Literal["cls", "all"]
Tokens = Positions  # the old name of the type
#: How the frozen LayerNorm mean and β are shared among components (see the package doc).
LnMode = Literal["reference", "center_each"]
LN_MODES = ("reference", "center_each")


def check_ln_mode(ln_mode: str) -> None:
    if ln_mode not in LN_MODES:
        raise ValueError(f"ln_mode must be 'reference' or 'center_each', got {ln_mode!r}")


# ---------------------------------------------------------------------------- readout
@dataclass
class _Readout:
    """How the final residual stream becomes the (pre-projection) embedding."""

    kappa: Tensor  # [batch, pos]: κ_q = π_q / σ_q
    mu_kappa: Tensor  # [batch, pos]: κ_q μ_q (the frozen mean, weighted)
    embedding: Tensor  # [batch, d_out]: the model's output e


def _pool_weights(tower, inputs: Tensor | None, x: Tensor) -> Tensor:
    """π [batch, pos]: how the tower pools its final residual stream ``x``."""
    batch, pos = x.shape[:2]
    pi = torch.zeros(batch, pos, device=x.device, dtype=x.dtype)
    if hasattr(tower, "pool_index"):  # text: the EOT (or configured) token
        pi[torch.arange(batch), tower.pool_index(inputs)] = 1.0
    elif tower.cfg.pool_type == "tok":
        pi[:, 0] = 1.0
    else:
        start = int(tower.cfg.class_token)
        pi[:, start:] = 1.0 / (pos - start)
    return pi


def _final_ln(tower):
    return tower.ln_post if hasattr(tower, "ln_post") else tower.ln_final


def _final_ln_scale(name: str) -> str:
    """The hook of the final LayerNorm's scale σ: ``ln_post`` (vision) or ``ln_final`` (text)."""
    return act_name("ln_post_scale" if name == "visual" else "ln_final_scale", tower=name)


def _pattern_rows(tower) -> int | None:
    """How many leading query rows of the attention pattern the readout reads: 1 when the
    tower pools its class token, all (``None``) otherwise."""
    pools_first = not hasattr(tower, "pool_index") and tower.cfg.pool_type == "tok"
    return 1 if pools_first else None


def _readout(model, name: str, inputs: Tensor, cache: dict[str, Tensor], embedding: Tensor) -> _Readout:
    """Readout weights and frozen LayerNorm statistics from a forward pass's cache."""
    tower = getattr(model, name)
    x = cache[act_name("resid_post", len(tower.blocks) - 1, name)]
    pi = _pool_weights(tower, inputs, x)
    sigma = cache[_final_ln_scale(name)]
    if getattr(tower.cfg, "final_ln_after_pool", False):
        pooled = (pi.unsqueeze(-1) * x).sum(1)
        kappa = pi / sigma.view(-1, 1)
        mu = pooled.mean(-1, keepdim=True).expand_as(pi)
    else:
        kappa = pi / sigma.squeeze(-1)
        mu = x.mean(-1)
    return _Readout(kappa, kappa * mu, embedding)


def _into(out: Tensor, value: Tensor) -> None:
    out.copy_(value.view(out.shape))


class _Rows:
    """Joint-space rows of the decomposition for one forward pass (see the module doc),
    each multiplied by the per-image ``scale`` (``1/‖e‖`` or one)."""

    def __init__(self, tower, readout: _Readout, ln_mode: LnMode, positional: bool, scale: Tensor) -> None:
        ln = _final_ln(tower)
        P = tower.W_proj
        G = ln.w[:, None] * P  # diag(γ) P: [d_model, d_out]
        if ln_mode == "center_each":
            G = G - G.mean(0, keepdim=True)  # (c - mean(c)) ⊙ γ @ P == c @ (C_D diag(γ) P)
        self.G, self.g, self.b_beta = G, ln.w @ P, ln.b @ P
        self.reference = ln_mode == "reference"
        self.positional = positional
        L, H = len(tower.blocks), tower.cfg.heads
        self.n_heads = H
        self.omega_slot = 1.0 / (2 * L + 1)  # N_c = 2L + 1 slots share μ and β
        self.omega_head = self.omega_slot / H
        # The scale rides on κ (every term but β's is linear in κ), and on β's share.
        self.kappa = readout.kappa * scale[:, None]  # [batch, pos]
        self.mu_kappa = readout.mu_kappa * scale[:, None]  # [batch, pos]: κ_q μ_q / ‖e‖
        self.scale = scale
        self.kappa_sum = self.kappa.sum(1)  # [batch]
        self.mu_total = self.mu_kappa.sum(1)  # [batch]: Σ_q κ_q μ_q
        self.share = readout.kappa / readout.kappa.sum(1, keepdim=True)  # [batch, pos]: where β enters

    def _constant(self, omega: float, bias_joint: Tensor | None = None) -> Float[Tensor, "batch d_out"]:
        """The part of a row that does not depend on the component's output: its shares of
        β (and of μ in the reference convention) and of the output bias."""
        c = omega * self.scale[:, None] * self.b_beta
        if self.reference:
            c = c - omega * self.mu_total[:, None] * self.g
        if bias_joint is not None:
            c = c + self.kappa_sum[:, None] * bias_joint
        return c

    def slot(self, values: Float[Tensor, "batch pos d_model"], out: Tensor) -> None:
        """Embedding or MLP slot into ``out [batch, (pos,) d_out]``; per token, each
        position keeps its own share."""
        omega = self.omega_slot
        if not self.positional:
            _into(out, torch.einsum("bq,bqm->bm", self.kappa, values) @ self.G + self._constant(omega))
            return
        weighted = self.kappa.unsqueeze(-1) * values
        if _writable(out, weighted, self.G):
            torch.matmul(weighted, self.G, out=out)
        else:
            _into(out, weighted @ self.G)
        out += omega * (self.share * self.scale[:, None]).unsqueeze(-1) * self.b_beta
        if self.reference:
            out -= omega * self.mu_kappa.unsqueeze(-1) * self.g

    def heads(self, attn, heads: list[int], pattern: Tensor, v: Tensor, out: Tensor) -> None:
        """Rows of the listed heads of one layer into ``out [len(heads), batch, (pos,) d_out]``.

        ``pattern`` may hold only the leading query rows (those the readout reads, see
        :func:`_pattern_rows`); κ is zero on the others."""
        h0 = heads[0]
        sl = slice(h0, h0 + len(heads)) if heads == list(range(h0, h0 + len(heads))) else heads
        kappa = self.kappa[:, : pattern.shape[2]]
        alpha = torch.einsum("bq,bhqk->hbk", kappa, pattern[:, sl])  # κ-weighted attention
        v = v[:, :, sl].permute(2, 0, 1, 3)  # [h, b, k, e]
        W_joint = torch.einsum("hem,md->hed", attn.W_O[sl], self.G)  # W_O[h] diag(γ) P
        bias_joint = (attn.b_O @ self.G) / self.n_heads  # b_O split uniformly over heads
        constant = self._constant(self.omega_head, bias_joint)  # [b, d]
        h, b, k, e = v.shape
        if self.positional:
            weighted = (alpha.unsqueeze(-1) * v).reshape(h, b * k, e)
            flat = out.view(h, b * k, -1) if out.is_contiguous() else out
            _bmm_into(weighted, W_joint, flat)
            # Through the view that was written: under autograd, ``out`` (a sibling view made
            # before the write) would still count as a leaf and refuse the in-place add.
            flat.view(out.shape).add_((constant / k)[None, :, None])
        else:
            z_bar = torch.einsum("hbk,hbke->hbe", alpha, v)
            _bmm_into(z_bar, W_joint, out)
            out += constant


def _bmm_into(a: Tensor, b: Tensor, out: Tensor) -> None:
    if _writable(out, a, b):
        torch.bmm(a, b, out=out)
    else:
        _into(out, torch.bmm(a, b))


def _writable(out: Tensor, *inputs: Tensor) -> bool:
    """Whether a kernel can write into ``out`` directly (``out=`` takes contiguous
    tensors and does not record gradients)."""
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    return out.is_contiguous() and not grad
