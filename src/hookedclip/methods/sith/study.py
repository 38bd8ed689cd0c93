"""Fidelity and coherence of each pursuit as the number of concepts ``k`` grows.

For one layer and one dictionary, every method (``comp``, ``nnomp``, ``mp``, ``top_k``,
``lasso``) explains every singular vector with ``k`` concepts for each ``k`` asked for, and two
numbers are averaged over the vectors:

- **fidelity**: the cosine of the reconstruction ``Σ c_t d_t`` with the target in the joint space
  (1: the concepts rebuild the direction exactly);
- **coherence**: the mean pairwise cosine between the (centred, unit) embeddings of the concepts
  kept with a positive coefficient: how much the concepts of one explanation agree with each
  other, a data-free stand-in for judging by hand whether they share one meaning. Vectors with
  fewer than two kept concepts do not count.

Lasso's codes do not depend on ``k`` (its ``k`` largest are kept), so it is fitted once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip.identity import ModelIdentity, model_identity, model_label
from hookedclip.methods.sith.decompose import METHODS, check_arguments, fidelity
from hookedclip.methods.sith.dictionary import Dictionary
from hookedclip.methods.sith.joint import image_mean as mean_of_images
from hookedclip.methods.sith.joint import to_joint
from hookedclip.methods.sith.pursuit import Pursuit
from hookedclip.methods.sith.svd import head_svd
from hookedclip.results import Result, finish_figure, new_figure

ALL_METHODS = ("comp", "nnomp", "mp", "top_k", "lasso")


@dataclass(repr=False)
class FidelityStudy(Result):
    """Mean fidelity and coherence per method and ``k``.

    Attributes:
        methods, ks: the rows and columns.
        fidelity, fidelity_std, coherence: ``[method, k]``.
        layer, side, lam, l1_penalty, n_vectors: what was explained, and the weights of COMP and lasso.
    """

    _kind = "sith_fidelity_study"
    _version = 2  # v2 records l1_penalty
    _tensor_fields = ("fidelity", "fidelity_std", "coherence")
    _json_fields = ("methods", "ks", "layer", "side", "lam", "l1_penalty", "n_vectors")

    methods: list[str]
    ks: list[int]
    fidelity: Float[Tensor, "method k"]
    fidelity_std: Float[Tensor, "method k"]
    coherence: Float[Tensor, "method k"]
    layer: int
    side: str
    lam: float
    l1_penalty: float
    n_vectors: int
    model: ModelIdentity | None = None

    def _title(self) -> str:
        lasso = f", lasso l1_penalty={self.l1_penalty:g}" if "lasso" in self.methods else ""
        return (
            f"Fidelity and coherence of layer {self.layer} ({self.side} vectors, {self.n_vectors} of them) "
            f"of {model_label(self.model)}, COMP lam={self.lam:g}{lasso}"
        )

    def _table(self) -> tuple[list[str], list[list]]:
        rows = [
            [method, k, float(self.fidelity[m, j]), float(self.fidelity_std[m, j]), float(self.coherence[m, j])]
            for m, method in enumerate(self.methods)
            for j, k in enumerate(self.ks)
        ]
        return ["method", "k", "fidelity_mean", "fidelity_std", "coherence"], rows

    def plot(self, path: str | Path | None = None):
        """Fidelity (left) and coherence (right) against ``k``, one line per method (a ``Figure``)."""
        fig, _ = new_figure(9, 3.4)
        fig.clear()
        left, right = fig.subplots(1, 2, gridspec_kw={"wspace": 0.35})
        for m, method in enumerate(self.methods):
            label = f"comp (λ={self.lam:g})" if method == "comp" else method
            left.plot(self.ks, self.fidelity[m].tolist(), marker="o", label=label)
            right.plot(self.ks, self.coherence[m].tolist(), marker="o", label=label)
        left.set_xlabel("k (concepts per vector)")
        left.set_ylabel("mean fidelity (cosine)")
        left.set_title(f"Fidelity, layer {self.layer}", fontsize=9)
        right.set_xlabel("k (concepts per vector)")
        right.set_ylabel("mean pairwise cosine of the concepts")
        right.set_title("Coherence", fontsize=9)
        left.legend(fontsize=7)
        return finish_figure(fig, path)


@torch.no_grad()
def fidelity_study(
    model,
    layer: int,
    dictionary: Dictionary,
    ks: Sequence[int] = (1, 2, 3, 5, 10),
    methods: Sequence[str] = ALL_METHODS,
    lam: float = 0.3,
    side: str = "right",
    image_mean: Tensor | None = None,
    batches=None,
    l1_penalty: float = 0.1,
) -> FidelityStudy:
    """Fidelity and coherence of each of ``methods`` at each ``k`` (module docstring) for every
    singular vector of image-tower block ``layer``; ``lam`` is COMP's coherence weight and
    ``l1_penalty`` lasso's."""
    ks = sorted(set(ks))
    if not ks:
        raise ValueError("ks must name at least one k")
    for method in methods:
        layer = check_arguments(model, layer, dictionary, max(ks), method, [side], lam)
    if min(ks) < 1:
        raise ValueError(f"every k must be >= 1, got {ks}")
    if batches is not None:
        image_mean = mean_of_images(model, batches)
    svd = head_svd(model, layer)
    atoms = dictionary.atoms
    targets = to_joint(model, svd.vectors(side), image_mean=image_mean).float().cpu().reshape(-1, atoms.shape[1])
    fid, std, coh = (torch.zeros(len(methods), len(ks)) for _ in range(3))
    for m, method in enumerate(methods):
        lasso_codes = METHODS["lasso"](targets, atoms, max(ks), l1_penalty, 0) if method == "lasso" else None
        for j, k in enumerate(ks):
            if lasso_codes is not None:
                found = _first(lasso_codes, k)
            else:
                found = METHODS[method](targets, atoms, k, lam, 1 << 30)
            f = fidelity(found, targets, atoms)
            fid[m, j], std[m, j], coh[m, j] = f.mean(), f.std() if len(f) > 1 else 0.0, coherence(found, atoms)
    return FidelityStudy(
        fidelity=fid,
        fidelity_std=std,
        coherence=coh,
        methods=list(methods),
        ks=ks,
        layer=layer,
        side=side,
        lam=float(lam),
        l1_penalty=float(l1_penalty),
        n_vectors=targets.shape[0],
        model=model_identity(model),
    )


def _first(found: Pursuit, k: int) -> Pursuit:
    """Lasso's ``k`` largest coefficients (its slots are sorted by size)."""
    return Pursuit(
        indices=found.indices[..., :k],
        coefficients=found.coefficients[..., :k],
        residual_norms=found.residual_norms[..., :k],
        method=found.method,
        lam=found.lam,
    )


def coherence(found: Pursuit, atoms: Float[Tensor, "n_concepts d"]) -> float:
    """The mean over targets of the mean pairwise cosine of the concepts kept with a positive
    coefficient (targets with fewer than two do not count; ``nan`` when none has two)."""
    kept = (found.coefficients > 0) & (found.indices >= 0)  # [n, k]
    unit = torch.nn.functional.normalize(atoms.double(), dim=-1)
    vectors = unit[found.indices.clamp_min(0)] * kept.unsqueeze(-1)  # [n, k, d]
    gram = vectors @ vectors.transpose(-1, -2)
    n = kept.sum(-1).double()
    pairs = n * (n - 1)
    off_diagonal = gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    valid = pairs > 0
    if not valid.any():
        return float("nan")
    return float((off_diagonal[valid] / pairs[valid]).mean())
