"""Function-preserving weight rewrites and per-head weight products.

All rewrites act in place on a :class:`~hookedclip.model.hooked.HookedCLIP` and keep its
embeddings unchanged (up to float rounding); they change what some hook points show.

- :func:`fold_ln`: LayerNorm affine parameters into the weights that read them
  (``ln1`` into ``W_Q/W_K/W_V``, ``ln2`` into ``W_in``, ``ln_post``/``ln_final`` into the
  projection), then centres those reading weights. ``hook_normalized`` then shows the pure
  normalised residual ``(x - mean) / sigma``.
- :func:`center_writing_weights`: removes the all-ones component of everything written to
  the residual stream (``W_O, b_O, W_out, b_out``, and the embeddings where no ``ln_pre``
  follows them). Exact because every reader of the residual stream is a LayerNorm.
- :func:`fold_value_biases`: ``b_V`` into ``b_O`` (attention rows sum to one).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hookedclip.model.layers import LayerNorm


def _towers(model: nn.Module) -> Iterator[nn.Module]:
    for tower in (model.visual, getattr(model, "text", None)):
        if tower is not None:
            yield tower


def _reset(ln: LayerNorm) -> None:
    ln.w.fill_(1.0)
    ln.b.zero_()
    ln.folded = True


@torch.no_grad()
def fold_ln(model: nn.Module, center_reading_weights: bool = True) -> nn.Module:
    """Fold every LayerNorm's ``w, b`` into the weights that read its output.

    ``ln_pre`` is left alone: its output is the residual stream itself, with no weight
    before it to absorb the affine part. Returns ``model`` (changed in place).
    """
    for tower in _towers(model):
        for block in tower.blocks:
            attn, ln1 = block.attn, block.ln1
            for W, b in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V)):
                b += torch.einsum("m,hme->he", ln1.b, W)
                W *= ln1.w[None, :, None]
                if center_reading_weights:
                    W -= W.mean(1, keepdim=True)
            _reset(ln1)
            mlp, ln2 = block.mlp, block.ln2
            mlp.b_in += ln2.b @ mlp.W_in
            mlp.W_in *= ln2.w[:, None]
            if center_reading_weights:
                mlp.W_in -= mlp.W_in.mean(0, keepdim=True)
            _reset(ln2)
        final_ln = tower.ln_post if hasattr(tower, "ln_post") else tower.ln_final
        if tower.W_proj is not None:
            # Pooling (token or mean) commutes with the affine part of the final LayerNorm.
            tower.b_proj += final_ln.b @ tower.W_proj
            tower.W_proj *= final_ln.w[:, None]
            if center_reading_weights:
                tower.W_proj -= tower.W_proj.mean(0, keepdim=True)
            _reset(final_ln)
    model.cfg.extra["ln_folded"] = True
    return model


@torch.no_grad()
def center_writing_weights(model: nn.Module) -> nn.Module:
    """Subtract the mean over ``d_model`` from every vector written to the residual stream.

    The residual stream then has zero mean at every position after the first block
    (and everywhere when the tower has no ``ln_pre``). Returns ``model`` (changed in place).
    """
    for tower in _towers(model):
        for block in tower.blocks:
            for p in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out):
                p -= p.mean(-1, keepdim=True)
        if getattr(tower, "ln_pre", None) is None:
            for name in ("W_E", "W_pos", "pos_embed", "class_embedding"):
                p = getattr(tower, name, None)
                if p is not None:
                    p -= p.mean(-1, keepdim=True)
            if hasattr(tower, "embed"):
                tower.embed.W -= tower.embed.W.mean(0, keepdim=True)
                if tower.embed.b is not None:
                    tower.embed.b -= tower.embed.b.mean()
    model.cfg.extra["writing_weights_centered"] = True
    return model


@torch.no_grad()
def fold_value_biases(model: nn.Module) -> nn.Module:
    """Move each head's value bias into the output bias: ``b_O += Σ_h b_V[h] @ W_O[h]``,
    ``b_V = 0``. Exact because every attention pattern row sums to one."""
    for tower in _towers(model):
        for block in tower.blocks:
            attn = block.attn
            attn.b_O += torch.einsum("he,hem->m", attn.b_V, attn.W_O)
            attn.b_V.zero_()
    return model


# In TransformerLens's order; process_weights's flags shadow the function names.
_REWRITES = {
    "fold_ln": fold_ln,
    "center_writing_weights": center_writing_weights,
    "fold_value_biases": fold_value_biases,
}


def process_weights(
    model: nn.Module, fold_ln: bool = False, center_writing_weights: bool = False, fold_value_biases: bool = False
) -> nn.Module:
    """TransformerLens's function-preserving weight processing, the chosen rewrites in its order."""
    chosen = {
        "fold_ln": fold_ln,
        "center_writing_weights": center_writing_weights,
        "fold_value_biases": fold_value_biases,
    }
    for name, rewrite in _REWRITES.items():
        if chosen[name]:
            rewrite(model)
    return model


def W_OV(model: nn.Module, layer: int, tower: str = "visual") -> Float[Tensor, "head d_model d_model"]:
    """Per-head value-output matrices ``VO_h = W_V[h] @ W_O[h]`` (rank ≤ d_head), so that a
    head's output at a query is ``Σ_t A[q, t] · (x̂_t @ VO_h)`` plus biases."""
    attn = getattr(model, tower).blocks[layer].attn
    return torch.einsum("hme,hen->hmn", attn.W_V, attn.W_O)


def W_QK(model: nn.Module, layer: int, tower: str = "visual") -> Float[Tensor, "head d_model d_model"]:
    """Per-head query-key matrices ``W_Q[h] @ W_K[h]ᵀ`` (scores before the 1/sqrt(d_head) scale
    and biases are ``x̂_q @ W_QK[h] @ x̂_kᵀ``)."""
    attn = getattr(model, tower).blocks[layer].attn
    return torch.einsum("hme,hne->hmn", attn.W_Q, attn.W_K)
