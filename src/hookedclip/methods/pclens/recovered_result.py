"""The result of :func:`~hookedclip.methods.pclens.recovered.accuracy_recovered`: top-1 against
the per-head budget ``K``, one curve per method, with the mean-ablation baseline and the full model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hookedclip.identity import ModelIdentity, model_label
from hookedclip.plotting import finish_figure, new_figure, wilson
from hookedclip.results import Result, deprecated_alias, format_table
from hookedclip.zeroshot import accuracy_text


@dataclass(repr=False)
class AccuracyRecovered(Result):
    """Top-1 (in [0, 1]) against the per-head budget ``K``.

    Attributes:
        budgets: the ``K`` values (``0``: analysed heads mean-ablated).
        curves: ``method -> [accuracy per budget]`` (``"PCLens"``, ``"TextSpan"``).
        full: the full model (``argmax ê @ W_cls``).
        baseline: the mean-ablation baseline (earlier heads mean-ablated, analysed heads intact).
        heads: the analysed heads; ``ablated``: the mean-ablated earlier heads.
        n: images evaluated.
        model: the identity of the model evaluated (``None`` from :func:`evaluate` alone).
    """

    _kind = "accuracy_recovered"
    _json_fields = ("budgets", "curves", "full", "baseline", "heads", "ablated", "n")

    budgets: list[int]
    curves: dict[str, list[float]]
    full: float
    baseline: float
    heads: list[str]
    ablated: list[str] = field(default_factory=list)
    n: int = 0
    model: ModelIdentity | None = None

    # ---- the Result protocol
    def _accuracy(self, value: float) -> str:
        """``value`` in %, with its 95% Wilson interval when ``n`` is known."""
        return accuracy_text(value, self.n) if self.n else f"{100 * value:.1f}%"

    def _title(self) -> str:
        return (
            f"Accuracy recovered on {model_label(self.model)} ({self.n} images, "
            f"{len(self.heads)} analysed heads; [95% Wilson interval]): mean-ablation baseline "
            f"{self._accuracy(self.baseline)}, full model {self._accuracy(self.full)}"
        )

    def _table(self) -> tuple[list[str], list[list]]:
        """One row per method and budget, then the two reference rows (``budget`` empty)."""
        rows = [[method, k, acc] for method, values in self.curves.items() for k, acc in zip(self.budgets, values)]
        rows += [["mean-ablation baseline", "", self.baseline], ["full model", "", self.full]]
        return ["method", "budget", "accuracy"], rows

    def summary(self) -> str:
        """The title, then accuracy (%) with its 95% interval per budget, one column per method."""
        header = ["K", *self.curves]
        rows = [[k, *(self._accuracy(v[i]) for v in self.curves.values())] for i, k in enumerate(self.budgets)]
        return "\n".join([self._title(), *format_table(header, rows)])

    def _repr_sizes(self) -> dict:
        return {"methods": list(self.curves), "budgets": len(self.budgets), "heads": len(self.heads), "n": self.n}

    def table(self) -> str:
        """Deprecated: :meth:`summary`."""
        deprecated_alias("AccuracyRecovered.table()", "summary()")
        return self.summary()

    def plot(self, path: str | Path | None = None, title: str = "Accuracy recovered (direct)"):
        """Accuracy against ``K`` (one curve per method), the baseline and the full model as
        horizontal lines, each curve with its 95% Wilson band when ``n`` is known (a matplotlib
        ``Figure``; written to ``path`` when given)."""
        fig, ax = new_figure(5.2, 3.6)
        x = range(len(self.budgets))  # even spacing: budgets are roughly geometric
        for method, values in self.curves.items():
            (line,) = ax.plot(x, [100 * v for v in values], marker="o", markersize=4, label=method)
            if self.n:
                low, high = zip(*(wilson(v, self.n) for v in values))
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.axhline(
            100 * self.baseline,
            color="gray",
            linestyle="--",
            linewidth=1.2,
            label=f"mean-ablation baseline ({100 * self.baseline:.1f})",
        )
        ax.axhline(
            100 * self.full, color="black", linestyle=":", linewidth=1.2, label=f"full model ({100 * self.full:.1f})"
        )
        ax.set_xticks(list(x), [str(k) for k in self.budgets])
        ax.set_xlabel("K: PCs (PCLens) / texts (TextSpan) per analysed head")
        ax.set_ylabel("zero-shot top-1 (%)")
        ax.set_ylim(0, 102)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right", title="shaded: 95% interval" if self.n else None, title_fontsize=7)
        return finish_figure(fig, path)
