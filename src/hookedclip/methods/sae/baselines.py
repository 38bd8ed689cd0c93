"""Scores that rank latents without the gradient at the image: the baselines Act×Grad is
compared with in deletion and insertion curves.

* :func:`logit_lens` ``LL_j(t)``: the output read from the atom alone, ``y(Pᵀ ln_post(d_j))``
  (the full ``ln_post``, shift included, applied to the unit atom). It ignores the image: the
  same ranking for every input, so it can pick latents that are inactive on the image, whose
  deletion does nothing. It also ignores the activation's size and sign, the image's LayerNorm
  scale and centring (``1/σ`` and the projection off ``u``), the ``−yê`` term of the cosine's
  gradient and the other latents, and mixes in the LayerNorm shift ``β``.
* :func:`act_times_logit_lens` ``a_j · LL_j(t)``: adds the activation, still ignores the
  image's LayerNorm state and the ``−yê`` term.
* :func:`energy` ``a_j ‖d_j‖``: with unit atoms this is the activation itself; it ignores the
  output entirely (the same order for every prompt).
* :func:`random_active`: Gaussian scores on the active latents (``-inf`` elsewhere), the
  floor any informative order must beat.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip.methods.sae.attribution import closed_form
from hookedclip.methods.sae.model import TopKSAE
from hookedclip.methods.sae.readout import OutputHead, head_readout


@torch.no_grad()
def logit_lens(model, sae: TopKSAE, head: OutputHead) -> Float[Tensor, "n d_sae"]:
    """``LL [n, d_sae]``: each output read from each unit atom through ``ln_post`` and the projection."""
    atoms = sae.W_dec.T.detach()
    return head.to(atoms)(head_readout(model, atoms)).T


def act_times_logit_lens(
    a: Float[Tensor, "batch d_sae"], lens: Float[Tensor, "n d_sae"]
) -> Float[Tensor, "batch n d_sae"]:
    """``a_j · LL_j(t)`` for every image and output."""
    return a.unsqueeze(1) * lens.to(a).unsqueeze(0)


def energy(sae: TopKSAE, a: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
    """``a_j ‖d_j‖₂`` (equal to ``a`` for the autoencoder's unit atoms)."""
    return a * sae.W_dec.detach().norm(dim=0).to(a)


def random_active(a: Float[Tensor, "batch d_sae"], seed: int = 0) -> Float[Tensor, "batch d_sae"]:
    """Standard normal scores at the active latents (``a ≠ 0``), ``-inf`` at the others."""
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(seed), dtype=a.dtype).to(a.device)
    return torch.where(a != 0, noise, torch.full_like(a, float("-inf")))


@torch.no_grad()
def method_scores(
    model,
    sae: TopKSAE,
    residuals: Float[Tensor, "batch d_model"],
    head: OutputHead,
    targets: Int[Tensor, " batch"],
    splice: str = "error_kept",
    seed: int = 0,
) -> dict[str, Float[Tensor, "batch d_sae"]]:
    """The five scores of each image's latents for its target output, from class-token rows
    before ``ln_post``: ``{"Act×Grad", "Act×LogitLens", "LogitLens", "Energy", "Random"}``."""
    part = closed_form(model, sae, residuals, head, splice)
    rows = torch.arange(residuals.shape[0])
    dense = torch.zeros(residuals.shape[0], sae.d_sae, dtype=part.R_active.dtype)
    act_grad = dense.scatter_add(-1, part.latents, part.R_active[rows, targets] * part.active)
    a = sae.encode(residuals.to(sae.W_dec))
    lens = logit_lens(model, sae, head)[targets]  # [batch, d_sae]
    return {
        "Act×Grad": act_grad,
        "Act×LogitLens": a * lens,
        "LogitLens": lens,
        "Energy": energy(sae, a),
        "Random": random_active(a, seed),
    }


__all__ = ["act_times_logit_lens", "energy", "logit_lens", "method_scores", "random_active"]
