"""Latent augmentation: break the tie between a label and one latent before training a probe.

For a class-token autoencoder right before ``ln_post`` and a latent ``j*`` a classifier relies on
against its label (a shortcut), each training residual gets the latent's activation replaced by
a value drawn independently of the label,

    ``h̃ = h + (ã − a_{j*}(h)) d_{j*}``,  ``ẽ = Pᵀ ln_post(h̃) + b_proj``,

with ``ã`` from the latent's empirical distribution over the whole training set (or over the
images of the other classes). A linear probe trained on the original and the augmented
embeddings, both with the original labels, can no longer use ``a_{j*}`` to predict the label,
while everything else in the embedding stays as it was.

Three checks (:func:`augmentation_checks` runs the first two): ``ã = a_{j*}`` gives ``ẽ = e``
exactly; the correlation between the latent and the label in the augmented data is about 0; the
probe's mean Act×Grad on ``j*`` drops (compare :func:`attribute` with ``classifier=probe``
before and after).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from types import MappingProxyType
from typing import Literal, TypedDict

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from typing_extensions import Unpack

from hookedclip import ablation
from hookedclip._options import completed
from hookedclip.methods.sae.model import TopKSAE
from hookedclip.methods.sae.readout import head_readout, require_before_readout
from hookedclip.methods.sae.splice import splice_site

Source = Literal["all", "other_class"]
#: The class-token residuals the autoencoder reads, one row per image.
Residuals = Float[Tensor, "n d"]
#: One class index per image.
Labels = Int[Tensor, " n"]


def resample_values(
    a: Float[Tensor, " n"], labels: Int[Tensor, " n"], source: Source = "all", seed: int = 0
) -> Float[Tensor, " n"]:
    """``ã``: for each row, an activation drawn from the rows of the whole set (``"all"``) or of
    the other classes (``"other_class"``), independently of the row's own label."""
    if source not in ("all", "other_class"):
        raise ValueError(f"source must be 'all' or 'other_class', got {source!r}")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    if source == "all":
        return a[torch.randint(0, len(a), (len(a),), generator=gen)]
    out = torch.empty_like(a)
    for c in labels.unique():
        pool = a[labels != c]
        if len(pool) == 0:
            raise ValueError("source='other_class' needs at least two classes")
        rows = (labels == c).nonzero().squeeze(-1)
        out[rows] = pool[torch.randint(0, len(pool), (len(rows),), generator=gen)]
    return out


def augment_residuals(
    sae: TopKSAE, residuals: Float[Tensor, "n d"], latent: int, values: Float[Tensor, " n"]
) -> Float[Tensor, "n d"]:
    """``h̃ = h + (ã − a_{j*}(h)) d_{j*}``."""
    with torch.no_grad():
        h = residuals.to(sae.W_dec)
        return _shifted(sae, h, latent, sae.encode(h)[:, latent], values)


def _shifted(sae: TopKSAE, h: Tensor, latent: int, current: Tensor, values: Tensor) -> Tensor:
    """``h`` moved along the atom ``d_latent`` from the activation ``current`` to ``values``."""
    return h + (values.to(h) - current).unsqueeze(-1) * sae.W_dec[:, latent]


class AugmentOptions(TypedDict, total=False):
    """How the replacement activations ``ã`` are drawn: ``source`` (``"all"``: from the whole set;
    ``"other_class"``: from the images of the other classes; default ``"all"``) and ``seed`` (0)."""

    source: Source
    seed: int


class ProbeOptions(AugmentOptions, total=False):
    """:class:`AugmentOptions`, and for the probe: ``keep_original`` (train on the original
    embeddings too; default ``True``) and ``steps`` (optimiser steps; 300)."""

    keep_original: bool
    steps: int


_DEFAULTS = MappingProxyType({"source": "all", "seed": 0, "keep_original": True, "steps": 300})


def augmented_embeddings(
    model,
    sae: TopKSAE,
    residuals: Residuals,
    labels: Labels,
    latent: int,
    values: Float[Tensor, " n"] | None = None,
    **options: Unpack[AugmentOptions],
) -> tuple[Float[Tensor, "n e"], Float[Tensor, " n"]]:
    """``(ẽ, ã)``: the augmented image embeddings and the activations drawn (``options``), or
    ``values`` when given."""
    options = completed(_DEFAULTS, AugmentOptions, options, "augmented_embeddings")
    require_before_readout(model, sae, "latent augmentation")
    _check_latent(sae, latent)
    with torch.no_grad():
        h = residuals.to(sae.W_dec)
        a = sae.encode(h)[:, latent]  # encoded once: it is both the resampling pool and the shift's start
        values = resample_values(a, labels, **options) if values is None else values
        return head_readout(model, _shifted(sae, h, latent, a, values)), values


def train_probe(
    embeddings: Float[Tensor, "n e"], labels: Int[Tensor, " n"], steps: int = 300, lr: float = 0.05, seed: int = 0
) -> nn.Linear:
    """A multinomial logistic-regression probe on the unit embeddings (full batch, AdamW)."""
    torch.manual_seed(seed)
    x = F.normalize(embeddings.detach().float(), dim=-1)
    labels = torch.as_tensor(labels, dtype=torch.long)
    probe = nn.Linear(x.shape[1], int(labels.max()) + 1)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-3)
    for _ in range(steps):
        loss = F.cross_entropy(probe(x), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return probe.eval().requires_grad_(False)


def train_augmented_probe(
    model, sae: TopKSAE, residuals: Residuals, labels: Labels, latent: int, **options: Unpack[ProbeOptions]
) -> nn.Linear:
    """A linear probe on the original embeddings and their augmented copies (``keep_original``;
    else the copies alone), every copy with its original label (:class:`ProbeOptions`)."""
    options = completed(_DEFAULTS, ProbeOptions, options, "train_augmented_probe")
    keep_original, steps, seed = options.pop("keep_original"), options.pop("steps"), options["seed"]
    labels = torch.as_tensor(labels, dtype=torch.long)
    augmented, _ = augmented_embeddings(model, sae, residuals, labels, latent, **options)
    if keep_original:
        with torch.no_grad():
            original = head_readout(model, residuals.to(sae.W_dec))
        augmented, labels = torch.cat([original, augmented]), torch.cat([labels, labels])
    return train_probe(augmented, labels, steps=steps, seed=seed)


def label_correlation(values: Float[Tensor, " n"], labels: Int[Tensor, " n"]) -> float:
    """Pearson correlation between a latent's activation and a binary label (or the label index)."""
    v, y = values.double(), torch.as_tensor(labels).double()
    v, y = v - v.mean(), y - y.mean()
    return float((v * y).sum() / (v.norm() * y.norm()).clamp_min(1e-300))


def augmentation_checks(
    model, sae: TopKSAE, residuals: Float[Tensor, "n d"], labels: Int[Tensor, " n"], latent: int, seed: int = 0
) -> dict[str, float]:
    """``identity_error`` (max ``|ẽ − e|`` with ``ã = a``), the latent–label correlation before
    (``correlation_before``) and in the augmented copies (``correlation_after``)."""
    with torch.no_grad():
        h = residuals.to(sae.W_dec)
        a = sae.encode(h)[:, latent]
        same, _ = augmented_embeddings(model, sae, h, labels, latent, values=a)
        _, drawn = augmented_embeddings(model, sae, h, labels, latent, seed=seed)
        identity_error = float((same - head_readout(model, h)).abs().max())
    return {
        "identity_error": identity_error,
        "correlation_before": label_correlation(a, labels),
        "correlation_after": label_correlation(drawn, labels),
    }


@contextlib.contextmanager
def latent_augmentation(model, sae: TopKSAE, latent: int, pool: Float[Tensor, " m"], seed: int = 0):
    """Inside, every forward pass has latent ``latent`` of the residual ``sae`` reads replaced by
    a value drawn from ``pool`` (e.g. its activations over a training set), one per image,
    independently of anything else: ``h̃ = h + (ã − a_{j*}(h)) d_{j*}`` (an engine context)."""
    site = splice_site(model, sae)
    sae.check_model(model)
    _check_latent(sae, latent)
    if sae.cfg.token != "cls":
        raise ValueError("latent augmentation edits the class token: use a class-token autoencoder")
    gen = torch.Generator().manual_seed(seed)
    pool = torch.as_tensor(pool).flatten()
    if len(pool) == 0:
        raise ValueError("pool is empty: give the latent's activations over a training set")

    def replace(x: Tensor, site: str) -> Tensor:
        values = pool[torch.randint(0, len(pool), (x.shape[0],), generator=gen)].to(x)
        return torch.cat([augment_residuals(sae, x[:, 0], latent, values).unsqueeze(1), x[:, 1:]], dim=1)

    with ablation.intervene_at(model, site, replace):
        yield


def _check_latent(sae: TopKSAE, latent: int) -> None:
    if not 0 <= int(latent) < sae.d_sae:
        raise IndexError(f"latent {latent} is out of range for an autoencoder of {sae.d_sae} latents")


def mean_latent_attribution(attribution, latent: int, classes: Sequence[int] | None = None) -> float:
    """Mean ``R_{j*}`` over images, each to its class's output (``classes``; default output 0)."""
    R = attribution.R[:, :, latent]
    idx = torch.zeros(R.shape[0], dtype=torch.long) if classes is None else torch.as_tensor(classes, dtype=torch.long)
    return float(R[torch.arange(R.shape[0]), idx].mean())


__all__ = [
    "AugmentOptions",
    "ProbeOptions",
    "augment_residuals",
    "augmentation_checks",
    "augmented_embeddings",
    "label_correlation",
    "latent_augmentation",
    "mean_latent_attribution",
    "resample_values",
    "train_augmented_probe",
    "train_probe",
]
