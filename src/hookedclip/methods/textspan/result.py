"""The result of TextSpan for one component: :class:`TextSpanResult` (the chosen texts, the
subspace they span, the variance explained after each choice)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip.identity import ModelIdentity, model_label
from hookedclip.plotting import finish_figure, new_figure
from hookedclip.results import Result


@dataclass(repr=False)
class TextSpanResult(Result):
    """The texts TextSpan chose for one component, and the subspace they span.

    Attributes:
        texts: the ``m`` chosen texts, in selection order.
        indices: ``[m]`` their indices into the text pool.
        directions: ``[m, d']`` the residual text vectors ``r_i`` actually used (after the
            span restriction, the optional pool centring and Gram–Schmidt against the
            previously chosen ones); **not** normalised. Mutually orthogonal.
        basis: ``[m, d']`` orthonormal rows ``r_i / ‖r_i‖`` spanning the same space (``Q``).
        explained_variance: ``[m]`` cumulative ``(1/N) ‖Ĉ_i − c̄‖²_F`` after each step ``i``,
            i.e. the variance of the contributions inside ``span(r_1..r_i)``.
        total_variance: ``(1/N) ‖C − c̄‖²_F`` (biased: divides by ``N``).
        mean: ``[d']`` the data mean ``c̄``.
        scores: ``[m]`` the winning criterion value at each step.
        span: ``[r', d']`` the rows ``V_r`` used for the span restriction (``r' =
            min(r, N, d')``), or ``None`` when ``rank=None``.
        reconstruction: ``[N, d']`` the reference's ``Ĉ`` on the fitted data (only from
            :func:`~hookedclip.methods.textspan.text_span`; ``None`` from
            :func:`~hookedclip.methods.textspan.text_span_from_moments`).
        n: number of data rows ``N`` the statistics came from.
        criterion: the selection rule used.
        model: the :func:`~hookedclip.identity.model_identity` of the model behind the
            contributions (``None`` when computed from tensors alone).
    """

    _kind = "textspan"
    _tensor_fields = (
        "indices",
        "directions",
        "basis",
        "explained_variance",
        "mean",
        "scores",
        "span",
        "reconstruction",
    )
    _json_fields = ("texts", "total_variance", "n", "criterion")

    texts: list[str]
    indices: Int[Tensor, " m"]
    directions: Float[Tensor, "m d"]
    basis: Float[Tensor, "m d"]
    explained_variance: Float[Tensor, " m"]
    total_variance: float
    mean: Float[Tensor, " d"]
    scores: Float[Tensor, " m"] | None = None
    span: Float[Tensor, "r d"] | None = None
    reconstruction: Float[Tensor, "n d"] | None = None
    n: int = 0
    criterion: str = "unnormalized_std"
    model: ModelIdentity | None = None

    def __len__(self) -> int:
        return len(self.texts)

    # ---- the Result protocol
    def _title(self) -> str:
        explained = float(self.explained_fraction[-1]) if len(self) else 0.0
        return (
            f"TextSpan on {model_label(self.model)}: {len(self)} texts explain "
            f"{100 * explained:.1f}% of the variance (N={self.n}, {self.criterion})"
        )

    def _table(self) -> tuple[list[str], list[list]]:
        header = ["rank", "text", "pool_index", "score", "explained_variance", "explained_fraction"]
        scores = [None] * len(self) if self.scores is None else self.scores.tolist()
        rows = [
            [i + 1, text, int(j), score, float(v), float(f)]
            for i, (text, j, score, v, f) in enumerate(
                zip(
                    self.texts,
                    self.indices.tolist(),
                    scores,
                    self.explained_variance.tolist(),
                    self.explained_fraction.tolist(),
                )
            )
        ]
        return header, rows

    def _repr_sizes(self) -> dict:
        return {"texts": len(self), "d": self.mean.shape[-1], "n": self.n}

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """Cumulative share of the variance explained against the texts chosen (a matplotlib
        ``Figure``; written to ``path`` when given)."""
        fig, ax = new_figure(max(4.5, 0.3 * len(self) + 2.0), 3.4)
        ax.plot(range(1, len(self) + 1), [100 * float(f) for f in self.explained_fraction], marker="o", markersize=3.5)
        ax.set_xticks(range(1, len(self) + 1), self.texts, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("variance explained (%)")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.set_title(title or f"TextSpan ({model_label(self.model)})", fontsize=10)
        return finish_figure(fig, path)

    @property
    def explained_fraction(self) -> Float[Tensor, " m"]:
        """``[m]`` cumulative explained variance over total variance (1 where the total is 0)."""
        if self.total_variance > 0:
            return self.explained_variance / self.total_variance
        return torch.ones_like(self.explained_variance)

    def reconstruct(self, contributions: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """``Ĉ = c̄ + (C − c̄) Qᵀ Q`` for any contributions ``C [..., d']`` (``Q`` = ``basis``).

        Projects ``C − c̄`` onto the span of the chosen texts, with the fitted mean ``c̄``.
        Works on new data (the same mean is used). Computed in float64, returned in the
        dtype of ``contributions`` (float32 for non-floating input).
        """
        d = self.mean.shape[-1]
        if contributions.shape[-1] != d:
            raise ValueError(
                f"contributions have shape {tuple(contributions.shape)} but the TextSpan basis "
                f"has shape {tuple(self.basis.shape)}: last dimensions must both be d'={d}"
            )
        out_dtype = contributions.dtype if contributions.is_floating_point() else torch.float32
        x = contributions.to(torch.float64)
        mean = self.mean.to(device=x.device, dtype=torch.float64)
        q = self.basis.to(device=x.device, dtype=torch.float64)
        return (mean + ((x - mean) @ q.T) @ q).to(out_dtype)


__all__ = ["TextSpanResult"]
