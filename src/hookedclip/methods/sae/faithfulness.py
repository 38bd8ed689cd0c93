"""Deletion and insertion curves: how fast an output falls (rises) as latents are removed
(restored) in the order a score gives.

Deletion starts from the spliced model's code and, at step ``i``, ablates each image's ``c_i``
best-scored latents (zero, or their mean activation); insertion starts from the code with every
active latent ablated and restores the ``c_i`` best. The curve is the output after each step:
``100·cos`` to the image's target prompt, its logit, or its softmax probability among the
outputs. A latent that is inactive on the image is already at zero: ablating or restoring it
changes nothing (under either ablation), so an order that ranks inactive latents first (the
logit lens) loses steps. The area under the curve is its mean over the steps; for deletion a
lower area means a more faithful order.

For a class-token autoencoder right before ``ln_post`` (:func:`faithfulness` with
``residuals=``), every step of every image is an edit of the cached residual,
``h'_i = h' + Σ_{r < c_i} (ã_r − a_r) d_r``, built for all steps at once as a
``[batch, steps, d_model]`` tensor and read out by ``ln_post`` and the projection once; the ViT
never runs. With ``images=`` the spliced model runs once per step with the code edited
(any layer, class token or patch tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip.identity import model_identity
from hookedclip.methods.sae.faithfulness_result import Faithfulness
from hookedclip.methods.sae.model import TopKSAE
from hookedclip.methods.sae.readout import OutputHead, check_reaches_output, head_readout, require_before_readout
from hookedclip.methods.sae.splice import splice as splice_context
from hookedclip.methods.sae.splice import splice_site

Mode = Literal["deletion", "insertion"]
Ablation = Literal["zero", "mean"]
CURVE_SPLICES = ("recon_only", "error_kept")


def faithfulness(
    model,
    sae: TopKSAE,
    scores: Mapping[str, Float[Tensor, "batch d_sae"]] | Float[Tensor, "batch d_sae"],
    head: OutputHead,
    targets: Int[Tensor, " batch"] | None = None,
    residuals: Float[Tensor, "batch d_model"] | None = None,
    images: Float[Tensor, "batch channel height width"] | None = None,
    mode: Mode = "deletion",
    ablation: Ablation = "zero",
    splice: str = "recon_only",
    steps: int | Sequence[float] = 10,
    means: Float[Tensor, " d_sae"] | None = None,
    by_magnitude: bool = False,
    active_only: bool = False,
    batch_size: int = 256,
) -> Faithfulness:
    """Deletion (or insertion) curves of each image's ``head`` output ``targets[b]``, one per
    ordering in ``scores`` (name -> ``[batch, d_sae]``; a bare tensor is named ``"scores"``).

    Args:
        head: the outputs (:func:`~hookedclip.methods.sae.readout.output_head`); ``"cosine"``
            curves are ``100·cos``. targets: which output each image is measured on (default 0).
        residuals: class-token rows before ``ln_post`` (the cached fast path); or ``images``
            (the spliced model re-run per step).
        ablation: ``"zero"`` or ``"mean"`` (``means [d_sae]``, default: the mean activation over
            the given images). splice: ``"recon_only"`` (the error dropped) or ``"error_kept"``.
        steps: ``n`` (latent counts ``0..n``) or fractions of each image's active set (which
            rank only the active latents).
        by_magnitude: order by ``|score|``. active_only: rank only the image's active latents
            (by default every latent is ranked, as the reference protocol does).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if ablation not in ("zero", "mean"):
        raise ValueError(f"ablation must be 'zero' or 'mean', got {ablation!r}")
    if splice not in CURVE_SPLICES:
        raise ValueError(f"splice must be one of {CURVE_SPLICES}, got {splice!r}")
    if (residuals is None) == (images is None):
        raise ValueError("give residuals= (class-token rows before ln_post) or images=, exactly one")
    splice_site(model, sae)
    check_reaches_output(model, sae)
    if residuals is not None:
        require_before_readout(model, sae, "faithfulness from cached residuals")
    n = (residuals if residuals is not None else images).shape[0]
    scores = {"scores": scores} if isinstance(scores, Tensor) else dict(scores)
    for name, s in scores.items():
        if not isinstance(s, Tensor) or tuple(s.shape) != (n, sae.d_sae):
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(
                f"scores {name!r} must be [n_images, d_sae] = [{n}, {sae.d_sae}] (one score per latent per image), got {got}"
            )
    targets = torch.zeros(n, dtype=torch.long) if targets is None else torch.as_tensor(targets, dtype=torch.long)
    if targets.shape != (n,) or (n and (targets.min() < 0 or targets.max() >= len(head))):
        raise ValueError(f"targets must be [{n}] indices into the head's {len(head)} outputs")
    a = code(model, sae, residuals, images, batch_size)
    if means is None:
        means = a.mean(0)
    if ablation == "zero":
        means = torch.zeros_like(means)
    active_only = active_only or not isinstance(steps, int)  # a fraction of the active set counts active latents
    counts, xs = step_counts(steps, (a != 0).sum(-1), sae.d_sae, active_only)
    curves = []
    for s in scores.values():
        order = ranking(s.to(a), a, by_magnitude, active_only)[:, : int(counts.max()) or 1]
        if residuals is not None:
            curve = _cached_curves(
                model, sae, residuals, a, order, counts, head, targets, mode, means, splice, batch_size
            )
        else:
            curve = _forward_curves(
                model, sae, images, a, order, counts, head, targets, mode, means, splice, batch_size
            )
        curves.append(curve * (100.0 if head.kind == "cosine" else 1.0))
    return Faithfulness(
        curves=torch.stack(curves).cpu(),
        methods=list(scores),
        steps=xs,
        mode=mode,
        ablation=ablation,
        splice=splice,
        output=head.kind,
        model=model_identity(model),
    )


@torch.no_grad()
def code(
    model, sae: TopKSAE, residuals: Tensor | None, images: Tensor | None, batch_size: int = 256
) -> Float[Tensor, "batch d_sae"]:
    """Each image's code (class token), or its code summed over the patch tokens (spatial)."""
    if residuals is not None:
        return sae.encode(residuals.to(sae.W_dec))
    saved = []
    record = [("hook_sae_acts_post", lambda a, hook: saved.append(a.sum(1)))]
    with splice_context(model, sae, "off"), sae.hooks(fwd_hooks=record):
        for start in range(0, images.shape[0], batch_size):
            model.encode_image(images[start : start + batch_size])
    return torch.cat(saved)


def ranking(
    scores: Float[Tensor, "batch d_sae"], a: Float[Tensor, "batch d_sae"], by_magnitude: bool, active_only: bool
) -> Int[Tensor, "batch d_sae"]:
    """Latent indices, best score first (ties: the lower index first); inactive ones last with ``active_only``."""
    key = scores.abs() if by_magnitude else scores
    key = torch.nan_to_num(key, nan=float("-inf"))
    if active_only:
        key = torch.where(a != 0, key, torch.full_like(key, float("-inf")))
    return torch.sort(key, dim=-1, descending=True, stable=True).indices


def step_counts(
    steps: int | Sequence[float], n_active: Int[Tensor, " batch"], d_sae: int, active_only: bool
) -> tuple[Int[Tensor, "batch steps"], list[float]]:
    """How many latents each image has ablated at each step, and the steps' x values."""
    if isinstance(steps, int):
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        xs = list(range(steps + 1))
        counts = torch.tensor(xs).clamp_max(d_sae).expand(n_active.shape[0], -1)
        return (counts.minimum(n_active.unsqueeze(-1)) if active_only else counts).contiguous(), [float(x) for x in xs]
    fractions = [float(f) for f in steps]
    if not fractions or any(not 0 <= f <= 1 for f in fractions):
        raise ValueError(f"steps given as fractions of the active set must lie in [0, 1], got {list(steps)}")
    counts = (torch.tensor(fractions).unsqueeze(0) * n_active.unsqueeze(-1)).round().long()
    return counts, fractions


def _replacement(a: Tensor, order: Tensor, means: Tensor) -> tuple[Tensor, Tensor]:
    """``(a_r, ã_r)`` at the ranked latents: the ablated value is the mean where active, else 0 (no change)."""
    selected = a.gather(-1, order)
    return selected, torch.where(selected != 0, means.to(a)[order], torch.zeros_like(selected))


def _cached_curves(model, sae, residuals, a, order, counts, head, targets, mode, means, splice, batch_size):
    out = []
    head = head.to(sae.W_dec)
    for start in range(0, residuals.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        h, a_b, order_b, counts_b = residuals[rows].to(sae.W_dec), a[rows], order[rows], counts[rows]
        with torch.no_grad():
            recons = a_b @ sae.W_dec.T
            full = h if splice == "error_kept" else recons
            selected, ablated = _replacement(a_b, order_b, means)
            change = (ablated - selected).unsqueeze(-1) * sae.W_dec.T[order_b]  # [b, c, D]
            cumulative = torch.cat([torch.zeros_like(change[:, :1]), change.cumsum(1)], dim=1)
            picked = cumulative.gather(1, counts_b.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # [b, steps, D]
            if mode == "deletion":
                edited = full.unsqueeze(1) + picked
            else:  # every active latent ablated, then the first c_i restored
                everything = (torch.where(a_b != 0, means.to(a_b).expand_as(a_b), a_b) - a_b) @ sae.W_dec.T
                edited = (full + everything).unsqueeze(1) - picked
            y = head(head_readout(model, edited))  # [b, steps, n]
            out.append(y.gather(-1, targets[rows].view(-1, 1, 1).expand(-1, y.shape[1], 1)).squeeze(-1))
    return torch.cat(out)


def _forward_curves(model, sae, images, a, order, counts, head, targets, mode, means, splice, batch_size):
    """The same curves by re-running the spliced model once per step with the code edited (the
    error node keeps the error of the unedited code, so the edit reaches the output)."""
    head = head.to(sae.W_dec)
    columns = []
    for step in range(counts.shape[1]):
        ranks = torch.arange(order.shape[1]).unsqueeze(0) < counts[:, step : step + 1]  # [batch, c]
        chosen = torch.zeros_like(a, dtype=torch.bool).scatter(-1, order, ranks)  # [batch, d_sae]
        ys = []
        for start in range(0, images.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            hooks = _edit_hooks(sae, chosen[rows], means, mode)
            with torch.no_grad(), splice_context(model, sae, splice), sae.hooks(fwd_hooks=hooks):
                y = head(model.encode_image(images[rows]))
            ys.append(y.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1))
        columns.append(torch.cat(ys))
    return torch.stack(columns, dim=1)


def _edit_hooks(sae: TopKSAE, chosen: Tensor, means: Tensor, mode: Mode) -> list:
    def edit_code(a, hook):  # a [batch, tokens, d_sae]
        pick = chosen.unsqueeze(1) if mode == "deletion" else ~chosen.unsqueeze(1)
        return torch.where(pick & (a != 0), means.to(a).expand_as(a), a)

    return [("hook_sae_acts_post", edit_code)]


__all__ = ["CURVE_SPLICES", "Faithfulness", "faithfulness", "ranking", "step_counts"]
