"""The result of a debiasing sweep: one :class:`SweepPoint` per number ``K`` of PCs removed per
spurious concept, gathered in a :class:`DebiasSweep` that picks a point on the trade-off between
worst-group and average accuracy (see :meth:`DebiasSweep.pick`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hookedclip.identity import ModelIdentity, model_label
from hookedclip.plotting import colormap, finish_figure, new_figure
from hookedclip.results import Result
from hookedclip.zeroshot import accuracy_interval, accuracy_text


@dataclass
class SweepPoint:
    """Accuracies with the union of each concept's top-``k`` PCs removed (``k = 0``: the
    unmodified model). Accuracies are fractions in [0, 1]; ``groups`` is keyed by group name,
    ``group_n`` gives each group's number of images and ``n`` the total (0 when unknown, in
    files written before they were recorded)."""

    k: int
    n_removed: int
    average: float
    worst_group: float
    groups: dict[str, float]
    removed: list[tuple[str, int]] = field(default_factory=list, repr=False)
    n: int = 0
    group_n: dict[str, int] = field(default_factory=dict)

    @property
    def worst_group_name(self) -> str:
        return min(self.groups, key=self.groups.get)

    def interval(self, which: str = "worst group") -> tuple[float, float]:
        """The 95% Wilson interval of ``"average"``, ``"worst group"`` (that group's accuracy) or
        a group's accuracy, as fractions."""
        value, n = self._value_and_n(which)
        if n <= 0:
            raise ValueError("this point has no image counts (saved by an older version): no interval")
        return accuracy_interval(round(value * n), n)

    def text(self, which: str = "worst group") -> str:
        """``"61.4% [57.1, 65.6]"``: the accuracy with its 95% interval (without counts: the accuracy)."""
        value, n = self._value_and_n(which)
        return accuracy_text(value, n) if n > 0 else f"{100 * value:.1f}%"

    def _value_and_n(self, which: str) -> tuple[float, int]:
        if which == "average":
            return self.average, self.n
        name = self.worst_group_name if which == "worst group" else which
        if name not in self.groups:
            raise KeyError(f"{which!r}: use 'average', 'worst group' or a group name ({', '.join(self.groups)})")
        return self.groups[name], self.group_n.get(name, 0)


@dataclass(repr=False)
class DebiasSweep(Result):
    """The result of :func:`debias_sweep`: one :class:`SweepPoint` per ``K`` (``points[0]`` is
    the unmodified model) measured on the evaluation (test) images, and the picked point
    (``chosen``, one of ``points``) under ``margin``.

    With a validation set, ``validation`` holds the same sweep measured there and ``K`` is picked
    on it (``selected_on == "validation"``); the test points then report the pick without having
    chosen it. ``random_control`` holds points that remove as many PCs as the pick, drawn at
    random from the analysed heads (on the test images): what removing *any* PCs does."""

    _kind = "debias"
    _json_fields = (
        "concepts",
        "group_names",
        "points",
        "margin",
        "chosen",
        "n_images",
        "validation",
        "n_validation",
        "random_control",
    )

    concepts: list[str]
    group_names: list[str]
    points: list[SweepPoint]
    margin: float
    chosen: SweepPoint
    n_images: int
    model: ModelIdentity | None = None
    validation: list[SweepPoint] | None = None
    n_validation: int = 0
    random_control: list[SweepPoint] = field(default_factory=list)

    @property
    def baseline(self) -> SweepPoint:
        return self.points[0]

    @property
    def selected_on(self) -> str:
        """Where ``K`` was chosen: ``"validation"`` or ``"test"`` (the images it is reported on)."""
        return "validation" if self.validation else "test"

    @staticmethod
    def pick(points: Sequence[SweepPoint], margin: float) -> SweepPoint:
        """The Pareto pick: the highest worst-group accuracy among the ``K ≥ 1`` whose worst-group
        accuracy is strictly above the unmodified model's and whose average accuracy is strictly
        above the unmodified model's minus ``margin`` (a fraction: 0.01 = one point); ties go to
        the fewest PCs removed. The unmodified model (``points[0]``) when no ``K`` qualifies.

        ``margin = 0`` is the reference implementation's rule (average **and** WGA strictly above the
        baseline, then maximum WGA). A positive margin lets a small loss in average accuracy buy
        a large worst-group gain, which is the point of debiasing.
        """
        base = points[0]
        allowed = [p for p in points[1:] if p.average > base.average - margin and p.worst_group > base.worst_group]
        if not allowed:
            return base
        return max(allowed, key=lambda p: (p.worst_group, -p.n_removed))

    # ---- output
    HEADER = ["k_per_concept", "pcs_removed", "average", "worst_group"]

    def rows(self) -> list[list]:
        return [
            [p.k, p.n_removed, p.average, p.worst_group]
            + [p.groups[g] for g in self.group_names]
            + [int(p is self.chosen)]
            for p in self.points
        ]

    # ---- the Result protocol (``to_csv``: one row per ``K``, fractions, ``chosen`` 1 for the pick)
    def _table(self) -> tuple[list[str], list[list]]:
        return self.HEADER + self.group_names + ["chosen"], self.rows()

    def _repr_sizes(self) -> dict:
        return {
            "concepts": len(self.concepts),
            "points": len(self.points),
            "groups": len(self.group_names),
            "chosen_k": self.chosen.k,
        }

    def _state(self) -> tuple[dict, dict]:
        tensors, fields = super()._state()
        fields["points"] = [asdict(p) for p in self.points]
        fields["chosen"] = self.points.index(self.chosen)  # saved as an index into points
        fields["validation"] = None if self.validation is None else [asdict(p) for p in self.validation]
        fields["random_control"] = [asdict(p) for p in self.random_control]
        return tensors, fields

    @classmethod
    def _from_state(cls, tensors: dict, fields: dict, model: ModelIdentity | None) -> DebiasSweep:
        def points_of(records):
            return [SweepPoint(**dict(p, removed=[tuple(pc) for pc in p["removed"]])) for p in records]

        points = points_of(fields["points"])
        validation = fields.get("validation")
        return cls(
            **dict(
                fields,
                points=points,
                chosen=points[fields["chosen"]],
                validation=None if validation is None else points_of(validation),
                random_control=points_of(fields.get("random_control") or []),
            ),
            model=model,
        )

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """Worst-group and average accuracy against ``K`` (thin lines: each group), the
        unmodified model's values dashed, shaded 95% intervals around the bold curves, the
        validation worst group dotted (when ``K`` was picked there) and the picked ``K`` marked
        by a vertical line (a matplotlib ``Figure``; written to ``path`` when given). The x axis is symmetric-log so a
        sweep from 0 to large ``K`` stays readable."""
        ks = [p.k for p in self.points]
        fig, ax = new_figure(6.8, 3.8)
        for i, g in enumerate(self.group_names):
            ax.plot(
                ks,
                [100 * p.groups[g] for p in self.points],
                color=colormap("Dark2")(i % 8),
                linewidth=1.3,
                alpha=0.9,
                marker=".",
                markersize=5,
                label=g,
            )
        bold = {"worst group": "#C44E52", "average": "#1f3b73"}
        for name, colour in bold.items():
            values = [p.average if name == "average" else p.worst_group for p in self.points]
            ax.plot(ks, [100 * v for v in values], color=colour, linewidth=2.6, marker="o", markersize=5, label=name)
            if all(p.n for p in self.points):  # the 95% interval of each point
                low, high = zip(*(p.interval(name) for p in self.points))
                band = "shaded: 95% intervals" if name == "average" else None
                ax.fill_between(
                    ks, [100 * v for v in low], [100 * v for v in high], color=colour, alpha=0.15, label=band
                )
            ax.axhline(
                100 * values[0],
                color=colour,
                linestyle="--",
                linewidth=1,
                alpha=0.8,
                label=f"{name}, original: {100 * values[0]:.1f}%",
            )
        if self.validation:
            ax.plot(
                [p.k for p in self.validation],
                [100 * p.worst_group for p in self.validation],
                color="#C44E52",
                linestyle=":",
                linewidth=1.4,
                marker="x",
                markersize=4,
                label="worst group, validation (picks K)",
            )
        ax.axvline(
            self.chosen.k,
            color="black",
            linestyle=":",
            linewidth=1.5,
            label=f"pick: K = {self.chosen.k} (on {self.selected_on}, margin {100 * self.margin:.0f} pt)",
        )
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(ks, [str(k) for k in ks], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("top PCs removed per concept (K; 0 = original model)")
        ax.set_ylabel("accuracy (%)")
        lowest = min([p.worst_group for p in self.points] + [v for p in self.points for v in p.groups.values()])
        ax.set_ylim(max(0.0, 10 * math.floor(10 * lowest - 0.5)), 102)  # from the decade below the lowest value
        ax.set_title(title or f"Removing the PCs of {', '.join(repr(c) for c in self.concepts)}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return finish_figure(fig, path)

    def summary(self) -> str:
        """A few lines: the baseline, the picked point (with 95% intervals), where K was chosen,
        the random-PC control and the rule."""
        b, c = self.baseline, self.chosen
        lines = [
            f"spurious concepts: {'; '.join(self.concepts)} ({self.n_images} images, "
            f"{len(self.points) - 1} values of K)",
            f"model:            {model_label(self.model)}",
            f"original model:   average {b.text('average')}, worst group {b.text()} ({b.worst_group_name})",
        ]
        where = (
            f"K chosen on {self.n_validation} validation images, reported on the test images"
            if self.validation
            else "K chosen on the test images themselves (no validation set): optimistic"
        )
        if c is b:
            lines.append(
                f"no K raised the worst group with average above original - {100 * self.margin:.1f} points: "
                f"keep the model ({where})"
            )
        else:
            lines.append(
                f"picked K={c.k} ({c.n_removed} PCs removed): average {c.text('average')}, worst group "
                f"{c.text()} ({100 * (c.worst_group - b.worst_group):+.1f} points); {where}"
            )
        lines.append("  " + ", ".join(f"{g} {c.text(g)}" for g in self.group_names))
        if self.random_control:
            wga = [p.worst_group for p in self.random_control]
            avg = [p.average for p in self.random_control]
            lines.append(
                f"control: {c.n_removed} random PCs removed ({len(wga)} draws): worst group "
                f"{100 * min(wga):.1f}-{100 * max(wga):.1f}%, average {100 * min(avg):.1f}-{100 * max(avg):.1f}%"
            )
        lines.append(
            f"rule: best worst-group accuracy above the original's, with average > original - "
            f"{100 * self.margin:.1f} points; ties to fewer PCs"
        )
        return "\n".join(lines)


__all__ = ["SweepPoint", "DebiasSweep"]
