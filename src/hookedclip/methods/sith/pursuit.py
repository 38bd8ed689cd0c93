"""Sparse non-negative decompositions of target vectors over a dictionary of concept embeddings.

Every function explains each target ``x`` (a unit row) as ``Σ_t c_t d_{j_t}`` with ``k`` atoms
``d_j`` (rows of the dictionary) and coefficients ``c ≥ 0``, and returns a :class:`Pursuit`.

- :func:`comp` (coherent orthogonal matching pursuit), the method SITH uses. ``k`` greedy steps;
  at each, every atom not yet chosen is scored by its signed agreement with the residual plus
  ``lam`` times its agreement with the mean of the atoms chosen so far,
  ``⟨r, d_j⟩ + lam · ⟨mean_{i ∈ S} d_i, d_j⟩`` (the second term only from the second step on),
  the best is added (the lowest index on ties) and the coefficients of all chosen atoms are
  refitted, non-negatively and exactly, against the original target. The coherence term steers
  the choice towards atoms that belong together; it never enters the fit. An atom whose refit
  coefficient is zero keeps its slot. Because the residual shrinks and the coherence term does
  not, ``lam > 0`` makes the choice depend on the target's scale: targets must be unit rows.
- :func:`nnomp`: the same with ``lam = 0`` (non-negative orthogonal matching pursuit).
- :func:`matching_pursuit`: no refit; each step takes ``max(⟨r, d_j⟩, 0)`` as the new atom's
  coefficient and subtracts it from the residual.
- :func:`top_k`: the ``k`` atoms most similar to the target, fitted once.
- :func:`lasso`: scikit-learn's ``Lasso`` (non-negative), its ``k`` largest coefficients.

The greedy methods run all targets at once, in chunks whose ``[chunk, n_atoms]`` score matrices
fit ``max_memory`` bytes. Per step they need one product with the dictionary: the two score
terms are one inner product with ``r + lam · mean_S d_i``.

:func:`prepare_dictionary` turns raw text embeddings into the dictionary the targets of
:func:`~hookedclip.methods.sith.to_joint` are compared with: unit rows, minus their mean, unit rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from typing_extensions import Unpack

from hookedclip._options import completed
from hookedclip.axis_size import axis_size
from hookedclip.identity import ModelIdentity
from hookedclip.methods.sith.nnls import nnls_gram
from hookedclip.methods.sith.screen import best_atoms
from hookedclip.results import Result

#: Default memory budget (bytes) for one chunk's score matrices.
MAX_MEMORY = 1 << 30
#: What a kernel returns for ``n`` targets: chosen indices, coefficients and residual norms, each ``[n, k]``.
_Codes = tuple[Tensor, Tensor, Tensor]


@dataclass(repr=False)
class Pursuit(Result):
    """Sparse codes of targets ``[..., d]`` over a dictionary ``[n_atoms, d]``.

    Attributes:
        indices: ``[..., k]`` dictionary rows in the order they were chosen (``-1``: none, only
            where :func:`lasso` found fewer than ``k`` non-zero coefficients).
        coefficients: ``[..., k]`` the final non-negative coefficients, aligned with ``indices``.
        residual_norms: ``[..., k]`` ``‖x - reconstruction‖`` after each step (greedy methods); for
            :func:`top_k` and :func:`lasso`, with the first ``t + 1`` final terms.
        method: ``"comp"``, ``"nnomp"``, ``"mp"``, ``"top_k"`` or ``"lasso"``.
        lam: the coherence weight (``comp``), the l1 penalty (``lasso``), else ``0``.
        concepts: optional names of the dictionary rows (used by :meth:`summary` and :meth:`to_csv`).
    """

    _kind = "sith_pursuit"
    _tensor_fields = ("indices", "coefficients", "residual_norms")

    indices: Int[Tensor, "... k"]
    coefficients: Float[Tensor, "... k"]
    residual_norms: Float[Tensor, "... k"]
    method: str = "comp"
    lam: float = 0.0
    concepts: list[str] | None = None
    model: ModelIdentity | None = None

    k = axis_size("indices", -1, "Atoms per target.")

    def dense(self, n_atoms: int) -> Float[Tensor, "... n_atoms"]:
        """The codes as dense ``[..., n_atoms]`` rows (zero off the chosen atoms)."""
        out = self.coefficients.new_zeros(*self.indices.shape[:-1], n_atoms + 1)
        out.scatter_(-1, self.indices.where(self.indices >= 0, n_atoms), self.coefficients)
        return out[..., :n_atoms]

    def reconstruct(self, dictionary: Float[Tensor, "n_atoms d"]) -> Float[Tensor, "... d"]:
        """``Σ_t c_t d_{j_t}`` per target."""
        atoms = dictionary[self.indices.clamp_min(0)].to(self.coefficients.dtype)
        return (self.coefficients.unsqueeze(-1) * atoms).sum(-2)

    def _title(self) -> str:
        shape = "x".join(map(str, self.indices.shape[:-1])) or "1"
        return f"Pursuit ({self.method}, lam={self.lam:g}, k={self.k}) of {shape} targets"

    def _table(self) -> tuple[list[str], list[list]]:
        flat_i = self.indices.reshape(-1, self.k).tolist()
        flat_c = self.coefficients.reshape(-1, self.k).tolist()
        flat_r = self.residual_norms.reshape(-1, self.k).tolist()
        rows = []
        for n, (idx, coef, res) in enumerate(zip(flat_i, flat_c, flat_r)):
            for step, (j, c, r) in enumerate(zip(idx, coef, res)):
                name = self.concepts[j] if self.concepts is not None and j >= 0 else ""
                rows.append([n, step, j, name, c, r])
        return ["target", "step", "index", "concept", "coefficient", "residual_norm"], rows

    def _repr_sizes(self) -> dict:
        return {"method": repr(self.method), "lam": self.lam, "targets": list(self.indices.shape[:-1]), "k": self.k}


# ---------------------------------------------------------------------------- the dictionary
def prepare_dictionary(embeddings: Float[Tensor, "n_atoms d"]) -> Float[Tensor, "n_atoms d"]:
    """Unit rows, minus their mean row, unit rows again: text embeddings centred on their own mean
    (the text side of the modality-gap correction :func:`~hookedclip.methods.sith.to_joint` makes
    on the image side)."""
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or embeddings.shape[0] < 2:
        got = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings must be [n_atoms >= 2, d] (one text embedding per row), got {got}")
    unit = F.normalize(embeddings, dim=-1)
    return F.normalize(unit - unit.mean(0, keepdim=True), dim=-1)


# ---------------------------------------------------------------------------- the greedy methods
def comp(
    targets: Float[Tensor, "... d"],
    dictionary: Float[Tensor, "n_atoms d"],
    k: int = 5,
    lam: float = 0.3,
    max_memory: int = MAX_MEMORY,
    concepts: list[str] | None = None,
    screen: bool = False,
) -> Pursuit:
    """Coherent orthogonal matching pursuit (module docstring).

    Args:
        targets: ``x [..., d]``, unit rows (e.g. :func:`~hookedclip.methods.sith.to_joint`'s output).
        dictionary: ``D [n_atoms, d]``, unit rows (:func:`prepare_dictionary`).
        k: atoms per target (exactly ``k`` steps).
        lam: weight of the coherence term; ``0`` is :func:`nnomp`.
        max_memory: bytes for one chunk's ``[chunk, n_atoms]`` scores.
        concepts: optional names of the dictionary rows, kept for the summary.
        screen: score the atoms in bfloat16 first and rescore the best exactly; the selections
            are certified identical (:mod:`~hookedclip.methods.sith.screen`). About 2-3x faster
            where the CPU (or GPU) has bfloat16 units, slower where it has none.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0 (the weight of the coherence term), got {lam}")
    X, lead = _checked(targets, dictionary, k, unit=lam > 0)
    low = dictionary.to(torch.bfloat16) if screen else None
    found = _chunked(X, dictionary, max_memory, lambda x: _greedy(x, dictionary, k, lam, low))
    return _pursuit(found, lead, "comp" if lam > 0 else "nnomp", lam, concepts)


class GreedyOptions(TypedDict, total=False):
    """The keyword options :func:`nnomp` shares with :func:`comp` (with comp's defaults)."""

    max_memory: int
    concepts: list[str] | None
    screen: bool


def nnomp(
    targets: Float[Tensor, "... d"],
    dictionary: Float[Tensor, "n_atoms d"],
    k: int = 5,
    **options: Unpack[GreedyOptions],
) -> Pursuit:
    """Non-negative orthogonal matching pursuit: :func:`comp` with ``lam = 0`` (any target scale);
    ``max_memory``, ``concepts`` and ``screen`` as there."""
    return comp(targets, dictionary, k=k, lam=0.0, **completed(comp, GreedyOptions, options, "nnomp"))


def _fixed_pursuit(name: str, method: str, kernel: Callable[[Tensor, Tensor, int], _Codes], doc: str):
    """A public pursuit without a weight of its own: :func:`matching_pursuit` and :func:`top_k`
    differ only in the kernel ``kernel(X [n, d], D [n_atoms, d], k)`` that codes one
    chunk of targets (``(indices, coefficients, residual_norms)``, each ``[n, k]``)."""

    def pursuit(
        targets: Float[Tensor, "... d"],
        dictionary: Float[Tensor, "n_atoms d"],
        k: int = 5,
        max_memory: int = MAX_MEMORY,
        concepts: list[str] | None = None,
    ) -> Pursuit:
        X, lead = _checked(targets, dictionary, k)
        found = _chunked(X, dictionary, max_memory, lambda x: kernel(x, dictionary, k))
        return _pursuit(found, lead, method, 0.0, concepts)

    pursuit.__name__ = pursuit.__qualname__ = name
    pursuit.__doc__ = doc
    return pursuit


def _top_k_kernel(X: Float[Tensor, "n d"], D: Float[Tensor, "m d"], k: int) -> tuple[Tensor, Tensor, Tensor]:
    chosen = (X @ D.T).topk(k, dim=-1).indices
    coef = _refit(X, D[chosen])
    return chosen, coef, _prefix_residuals(X, D[chosen], coef)


# lambdas: the kernels are defined further down
matching_pursuit = _fixed_pursuit(
    "matching_pursuit",
    "mp",
    lambda X, D, k: _matching(X, D, k),
    """Non-negative matching pursuit: ``k`` steps of taking the unchosen atom with the largest
    ``⟨r, d_j⟩``, giving it ``max(⟨r, d_j⟩, 0)`` and subtracting that from the residual.""",
)
top_k = _fixed_pursuit(
    "top_k",
    "top_k",
    lambda X, D, k: _top_k_kernel(X, D, k),
    "The ``k`` atoms with the largest ``⟨x, d_j⟩`` (descending), with one exact non-negative fit.",
)


def lasso(
    targets: Float[Tensor, "... d"],
    dictionary: Float[Tensor, "n_atoms d"],
    k: int = 5,
    l1_penalty: float = 0.1,
    concepts: list[str] | None = None,
) -> Pursuit:
    """scikit-learn's non-negative ``Lasso`` per target, ``min_{c ≥ 0} ‖x - cD‖² + l1_penalty · ‖c‖₁``
    (scikit-learn's ``alpha = l1_penalty / (2 d)``, no intercept), then its ``k`` largest coefficients,
    descending (``-1`` and ``0`` fill the slots when fewer are non-zero). One target at a time on the CPU."""
    from sklearn.linear_model import Lasso

    X, lead = _checked(targets, dictionary, k)
    D = dictionary.double().cpu().numpy()
    model = Lasso(alpha=l1_penalty / (2 * D.shape[1]), fit_intercept=False, positive=True, max_iter=10000, tol=1e-6)
    idx = torch.full((X.shape[0], k), -1, dtype=torch.long)
    coef = torch.zeros(X.shape[0], k, dtype=torch.float64)
    for n, x in enumerate(X.double().cpu().numpy()):
        codes = torch.from_numpy(model.fit(D.T, x).coef_.copy())
        best = codes.topk(k)
        keep = best.values > 0
        idx[n, : int(keep.sum())] = best.indices[keep]
        coef[n, : int(keep.sum())] = codes[best.indices[keep]]
    atoms = dictionary.double().cpu()[idx.clamp_min(0)]
    residuals = _prefix_residuals(X.double().cpu(), atoms, coef)
    return _pursuit((idx, coef, residuals), lead, "lasso", l1_penalty, concepts)


# ---------------------------------------------------------------------------- the kernels
def _greedy(
    X: Float[Tensor, "n d"], D: Float[Tensor, "m d"], k: int, lam: float, D_low: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    n = X.shape[0]
    chosen = torch.empty(n, k, dtype=torch.long, device=X.device)
    residual_norms = torch.empty(n, k, dtype=torch.float64, device=X.device)
    query, coef = X, None
    for step in range(k):
        # ⟨r, d_j⟩ + lam ⟨mean_S d_i, d_j⟩ as one product: ⟨r + lam mean_S d_i, d_j⟩
        if D_low is not None:
            chosen[:, step] = best_atoms(query, D, D_low, chosen[:, :step])
        else:
            scores = query @ D.T
            if step:
                scores.scatter_(1, chosen[:, :step], -torch.inf)
            chosen[:, step] = scores.argmax(-1)  # the first maximum on ties
        atoms = D[chosen[:, : step + 1]]
        coef = _refit(X, atoms)
        residual = X - (coef.unsqueeze(-1) * atoms.double()).sum(1).to(X.dtype)
        residual_norms[:, step] = residual.double().norm(dim=-1)
        query = residual + lam * atoms.mean(1) if lam else residual
    return chosen, coef, residual_norms


def _matching(X: Float[Tensor, "n d"], D: Float[Tensor, "m d"], k: int) -> tuple[Tensor, Tensor, Tensor]:
    n = X.shape[0]
    chosen = torch.empty(n, k, dtype=torch.long, device=X.device)
    coef = torch.zeros(n, k, dtype=torch.float64, device=X.device)
    residual_norms = torch.empty(n, k, dtype=torch.float64, device=X.device)
    residual = X
    for step in range(k):
        scores = residual @ D.T
        if step:
            scores.scatter_(1, chosen[:, :step], -torch.inf)
        best = scores.max(-1)
        chosen[:, step] = best.indices
        coef[:, step] = best.values.double().clamp_min(0)
        residual = residual - coef[:, step, None].to(X.dtype) * D[best.indices]
        residual_norms[:, step] = residual.double().norm(dim=-1)
    return chosen, coef, residual_norms


def _refit(X: Float[Tensor, "n d"], atoms: Float[Tensor, "n s d"]) -> Float[Tensor, "n s"]:
    """Exact non-negative least squares of every target on its chosen atoms (float64)."""
    A = atoms.double()
    gram = A @ A.transpose(-1, -2)
    return nnls_gram(gram, (A @ X.double().unsqueeze(-1)).squeeze(-1))


def _prefix_residuals(X: Tensor, atoms: Tensor, coef: Tensor) -> Tensor:
    partial = (coef.unsqueeze(-1) * atoms.double()).cumsum(1)
    return (X.double().unsqueeze(1) - partial).norm(dim=-1)


# ---------------------------------------------------------------------------- checks and chunks
def _checked(targets: Tensor, dictionary: Tensor, k: int, unit: bool = False) -> tuple[Tensor, tuple[int, ...]]:
    """``targets`` as ``[n, d]`` and their leading shape; every mistake raises before any work."""
    if not isinstance(dictionary, Tensor) or dictionary.ndim != 2:
        got = tuple(dictionary.shape) if isinstance(dictionary, Tensor) else type(dictionary).__name__
        raise ValueError(f"dictionary must be [n_atoms, d] (one concept embedding per row), got {got}")
    if not isinstance(targets, Tensor) or targets.ndim < 1:
        raise ValueError(f"targets must be a tensor [..., d], got {type(targets).__name__}")
    n_atoms, d = dictionary.shape
    if targets.shape[-1] != d:
        raise ValueError(
            f"the dictionary is {d} wide but the targets are {targets.shape[-1]} wide: both must live "
            "in one space (map head directions with sith.to_joint; encode concepts with the same model)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_atoms:
        raise ValueError(f"k must be an integer in 1..{n_atoms} (the dictionary has {n_atoms} atoms), got {k!r}")
    if targets.dtype != dictionary.dtype or targets.device != dictionary.device:
        raise ValueError(
            f"targets ({targets.dtype}, {targets.device}) and dictionary ({dictionary.dtype}, "
            f"{dictionary.device}) must share dtype and device: convert one with .to(...)"
        )
    X = targets.reshape(-1, d)
    if unit and X.shape[0]:
        norms = X.double().norm(dim=-1)
        if ((norms - 1).abs() > 1e-3).any():
            raise ValueError(
                "with lam > 0 the choice depends on the targets' scale, so targets must be unit rows "
                f"(norms range {norms.min():.4g}..{norms.max():.4g}): normalise them with "
                "torch.nn.functional.normalize(targets, dim=-1)"
            )
    return X, tuple(targets.shape[:-1])


def _chunked(
    X: Tensor, D: Tensor, max_memory: int, run: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
) -> tuple[Tensor, Tensor, Tensor]:
    # the score matrix and its temporaries: about three [chunk, n_atoms] buffers
    per_row = 3 * D.shape[0] * D.element_size()
    size = max(1, int(max_memory) // per_row)
    parts = [run(X[a : a + size]) for a in range(0, max(X.shape[0], 1), size)]  # no targets: one empty run
    return tuple(torch.cat(column) for column in zip(*parts))


def _pursuit(
    found: tuple[Tensor, Tensor, Tensor], lead: tuple[int, ...], method: str, lam: float, concepts: list[str] | None
) -> Pursuit:
    idx, coef, residuals = found
    k = idx.shape[-1]
    return Pursuit(
        indices=idx.reshape(*lead, k),
        coefficients=coef.reshape(*lead, k),
        residual_norms=residuals.reshape(*lead, k),
        method=method,
        lam=float(lam),
        concepts=list(concepts) if concepts is not None else None,
    )
