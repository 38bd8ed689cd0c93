"""The :class:`Faithfulness` result: deletion or insertion curves, one per ordering method."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip.identity import ModelIdentity, model_label
from hookedclip.results import Result, finish_figure, new_figure


@dataclass(repr=False)
class Faithfulness(Result):
    """``curves [method, image, step]``: each image's output after each step, for each method
    (``methods``), at ``steps`` (latent counts or fractions of the active set); ``mode``
    (deletion / insertion), ``ablation``, ``splice`` and ``output`` say how.

    The area under a curve is its mean over the steps; :meth:`auc` gives its mean over images
    and the standard error of that mean (the spread of per-image areas over ``√n_images``).
    """

    _kind = "sae_faithfulness"
    _tensor_fields = ("curves",)
    _json_fields = ("methods", "steps", "mode", "ablation", "splice", "output")

    curves: Float[Tensor, "method image step"]
    methods: list[str]
    steps: list[float]
    mode: str
    ablation: str
    splice: str
    output: str
    model: ModelIdentity | None = None

    def per_image_auc(self, method: str) -> Float[Tensor, " image"]:
        return self.curves[self._index(method)].double().mean(-1)

    def auc(self, method: str | None = None) -> dict[str, tuple[float, float]] | tuple[float, float]:
        """``(mean, standard error)`` of the area, for one method or ``{method: ...}`` for all."""
        if method is None:
            return {m: self.auc(m) for m in self.methods}
        return _mean_and_error(self.per_image_auc(method))

    def difference(self, method: str, other: str) -> tuple[float, float]:
        """``(mean, standard error)`` of the per-image area of ``method`` minus that of
        ``other``: the paired comparison (the same images), tighter than two separate bars."""
        return _mean_and_error(self.per_image_auc(method) - self.per_image_auc(other))

    def bootstrap(
        self, method: str, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
    ) -> tuple[float, float]:
        """A percentile bootstrap interval of the mean area over images."""
        values = self.per_image_auc(method)
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(values), (n_resamples, len(values)), generator=gen)
        means = values[idx].mean(-1)
        lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=means.dtype))
        return float(lo), float(hi)

    def mean_curve(self, method: str) -> Float[Tensor, " step"]:
        return self.curves[self._index(method)].double().mean(0)

    def _index(self, method: str) -> int:
        if method not in self.methods:
            raise KeyError(f"no method {method!r} in these curves (methods: {', '.join(self.methods)})")
        return self.methods.index(method)

    # ---- the Result protocol
    def _unit(self) -> str:
        return {"cosine": "100·cos", "logit": "logit", "probability": "probability"}.get(self.output, self.output)

    def _title(self) -> str:
        return (
            f"{self.mode.capitalize()} curves ({self.ablation} ablation, {self.splice}, {self._unit()}) on "
            f"{model_label(self.model)}: {self.curves.shape[1]} images, {len(self.steps)} steps"
        )

    def _table(self) -> tuple[list[str], list[list]]:
        header = ["method", "auc", "auc_stderr", *[f"step_{_fmt(s)}" for s in self.steps]]
        rows = []
        for m in self.methods:
            mean, err = self.auc(m)
            rows.append([m, mean, err, *[float(v) for v in self.mean_curve(m)]])
        return header, rows

    def _repr_sizes(self) -> dict:
        return {"methods": len(self.methods), "images": self.curves.shape[1], "steps": len(self.steps)}

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """One curve per method: the mean over images, shaded by ± one standard error."""
        fig, ax = new_figure(5.4, 3.6)
        for m in self.methods:
            curve = self.curves[self._index(m)].double()
            mean, err = curve.mean(0), curve.std(0) / math.sqrt(max(curve.shape[0], 1))
            auc, auc_err = self.auc(m)
            ax.plot(self.steps, mean, marker="o", markersize=3, label=f"{m} (AUC {auc:.1f} ± {auc_err:.1f})")
            ax.fill_between(self.steps, mean - err, mean + err, alpha=0.2)
        fractions = any(s != int(s) for s in self.steps)
        verb = "deleted" if self.mode == "deletion" else "inserted"
        ax.set_xlabel(f"fraction of active latents {verb}" if fractions else f"latents {verb}")
        ax.set_ylabel(self._unit())
        ax.set_title(title or f"{self.mode.capitalize()} ({self.ablation}, {self.splice})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        return finish_figure(fig, path)


def _fmt(step: float) -> str:
    return str(int(step)) if step == int(step) else f"{step:g}"


def _mean_and_error(values: Tensor) -> tuple[float, float]:
    n = values.shape[0]
    err = float(values.std() / math.sqrt(n)) if n > 1 else float("nan")
    return float(values.mean()), err


__all__ = ["Faithfulness"]
