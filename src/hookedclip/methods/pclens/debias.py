"""Removing a spurious feature with PCLens.

The reference's Waterbirds workflow (``proof_concept_2_remove``):

1. rank the PCs of the analysed heads for each spurious concept ("water background", ...)
   with the :class:`~hookedclip.methods.pclens.query.QuerySystem`;
2. for ``K`` = 1, 2, …, take the union of the concepts' top-``K`` PCs and **remove** it
   (:func:`~hookedclip.methods.pclens.selection.remove`: every other retained PC kept,
   ``mean_ablate_all=False``);
3. classify zero-shot and measure the per-group, average (micro, over all images) and
   worst-group accuracy;
4. pick a point on the trade-off between worst-group and average accuracy (see
   :meth:`DebiasSweep.pick`).

The images are decomposed once; every ``K`` then rewrites the stored per-head rows with the
per-head selection formula in closed form
(:func:`~hookedclip.methods.pclens.selection.selection_embeddings`),
which is what :func:`~hookedclip.methods.pclens.selection.remove` does inside a forward pass
(tested equal), without re-running the model per ``K``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip._compat import renamed_arguments
from hookedclip.data.batches import iter_images, iter_labelled
from hookedclip.decompose import ComponentStack, decompose_image
from hookedclip.identity import ModelIdentity
from hookedclip.methods.pclens.query import QueryResult, QuerySystem, union
from hookedclip.methods.pclens.result import PCLensResult
from hookedclip.methods.pclens.selection import PCSelection, selection_embeddings
from hookedclip.plotting import colormap, finish_figure, new_figure
from hookedclip.results import Result
from hookedclip.zeroshot import accuracy, group_accuracies

#: Default sweep: PCs per concept (``K = 0`` is the unmodified model and always measured).
DEFAULT_KS: tuple[int, ...] = (1, 2, 3, 5, 8, 12, 20, 30, 50)


@dataclass
class SweepPoint:
    """Accuracies with the union of each concept's top-``k`` PCs removed (``k = 0``: the
    unmodified model). Accuracies are fractions in [0, 1]; ``groups`` is keyed by group name."""

    k: int
    n_removed: int
    average: float
    worst_group: float
    groups: dict[str, float]
    removed: list[tuple[str, int]] = field(default_factory=list, repr=False)


@dataclass(repr=False)
class DebiasSweep(Result):
    """The result of :func:`debias_sweep`: one :class:`SweepPoint` per ``K`` (``points[0]`` is
    the unmodified model), and the picked point (``chosen``) under ``margin``."""

    _kind = "debias"
    _json_fields = ("concepts", "group_names", "points", "margin", "chosen", "n_images")

    concepts: list[str]
    group_names: list[str]
    points: list[SweepPoint]
    margin: float
    chosen: SweepPoint
    n_images: int
    model: ModelIdentity | None = None

    @property
    def baseline(self) -> SweepPoint:
        return self.points[0]

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
        return tensors, fields

    @classmethod
    def _from_state(cls, tensors: dict, fields: dict, model: ModelIdentity | None) -> DebiasSweep:
        points = [SweepPoint(**dict(p, removed=[tuple(pc) for pc in p["removed"]])) for p in fields["points"]]
        return cls(**dict(fields, points=points, chosen=points[fields["chosen"]]), model=model)

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """Worst-group and average accuracy against ``K`` (thin lines: each group), the
        unmodified model's values dashed and the picked ``K`` marked by a vertical line (a
        matplotlib ``Figure``; written to ``path`` when given). The x axis is symmetric-log so a
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
        bold = {
            "worst group": ("#C44E52", [p.worst_group for p in self.points]),
            "average": ("#1f3b73", [p.average for p in self.points]),
        }
        for name, (colour, values) in bold.items():
            ax.plot(ks, [100 * v for v in values], color=colour, linewidth=2.6, marker="o", markersize=5, label=name)
            ax.axhline(
                100 * values[0],
                color=colour,
                linestyle="--",
                linewidth=1,
                alpha=0.8,
                label=f"{name}, original: {100 * values[0]:.1f}%",
            )
        ax.axvline(
            self.chosen.k,
            color="black",
            linestyle=":",
            linewidth=1.5,
            label=f"pick: K = {self.chosen.k} (margin {100 * self.margin:.0f} pt)",
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
        """A few lines: the baseline, the picked point and the rule."""
        b, c = self.baseline, self.chosen
        lines = [
            f"spurious concepts: {'; '.join(self.concepts)} ({self.n_images} images, "
            f"{len(self.points) - 1} values of K)",
            f"model:            {self.model or 'not recorded'}",
            f"original model:   average {100 * b.average:.1f}%, worst group {100 * b.worst_group:.1f}%",
        ]
        if c is b:
            lines.append(
                f"no K raised the worst group with average above original - {100 * self.margin:.1f} points: "
                "keep the model"
            )
        else:
            lines.append(
                f"picked K={c.k} ({c.n_removed} PCs removed): average {100 * c.average:.1f}%, worst group "
                f"{100 * c.worst_group:.1f}% ({100 * (c.worst_group - b.worst_group):+.1f} points)"
            )
        lines.append("  " + ", ".join(f"{g} {100 * c.groups[g]:.1f}%" for g in self.group_names))
        lines.append(
            f"rule: best worst-group accuracy above the original's, with average > original - "
            f"{100 * self.margin:.1f} points; ties to fewer PCs"
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------


@torch.no_grad()
def decompose_batches(model, result: PCLensResult, batches) -> list[ComponentStack]:
    """One normalised CLS decomposition per batch of preprocessed images (``[B, C, H, W]``, or
    ``(images, labels[, groups])`` tuples; see :mod:`hookedclip.data.batches`), split into the
    analysed heads and "rest", kept on the CPU."""
    heads = list(result.heads)
    stacks = []
    for images in iter_images(batches, model):
        stack = decompose_image(model, images, components=heads)
        stacks.append(
            ComponentStack(
                stack.tensor.cpu(),
                stack.labels,
                stack.bias.cpu(),
                stack.components,
                stack.scale.cpu(),
                model=stack.model,
            )
        )
    return stacks


def _decomposed_with_targets(
    model, result: PCLensResult, batches, labels, groups
) -> tuple[list[ComponentStack], Tensor, Tensor]:
    """The decomposed batches with the labels and groups of every image, taken from
    ``(images, labels, groups)`` batches or given alongside image batches."""
    if (labels is None) != (groups is None):
        raise ValueError("give both labels= and groups=, or neither (then batches are (images, labels, groups))")
    if labels is not None:
        stacks = decompose_batches(model, result, batches)
        return stacks, torch.as_tensor(labels).cpu(), torch.as_tensor(groups).cpu()
    seen: list[tuple] = []

    def images():
        for batch in iter_labelled(batches):
            if batch.groups is None:
                raise TypeError(
                    "debias_sweep needs each image's group: batches of (images, labels, groups), "
                    "or labels= and groups= beside image batches"
                )
            seen.append((batch.labels, batch.groups))
            yield batch.images

    stacks = decompose_batches(model, result, images())
    if not stacks:
        raise ValueError("debias_sweep got no images: batches was empty")
    labels, groups = (torch.cat([torch.as_tensor(b[i]).cpu().reshape(-1) for b in seen]) for i in (0, 1))
    return stacks, labels, groups


def removal_embeddings(
    stacks: Sequence[ComponentStack], result: PCLensResult, pcs: Sequence[tuple[str, int]]
) -> Float[Tensor, "n d"]:
    """Unit-scale embeddings ``[N, d']`` with ``pcs`` removed from every analysed head (the
    closed form of :func:`~hookedclip.methods.pclens.selection.remove`)."""
    sel = PCSelection.indicator(result, pcs, value=0.0, default=1.0)  # 0 on the PCs, 1 elsewhere, all heads
    return torch.cat([selection_embeddings(s, result, sel, mean_ablate_all=False) for s in stacks])


def _top(r: QueryResult, k: int) -> QueryResult:
    out = QueryResult(
        r.query, r.entries[:k], r.max_score, r.entries[min(k, len(r.entries)) - 1].cumulative_cos, model=r.model
    )
    out._k = r._k
    return out


def concept_rankings(
    result: PCLensResult, model, concepts: Sequence[str], top_k: int, approx: float = 1.1
) -> list[QueryResult]:
    """Each concept's ranked PCs (up to ``top_k``); ``approx > 1`` never stops early, so a
    concept always gets ``top_k`` PCs (the reference's Waterbirds setting)."""
    qs = QuerySystem(result, model)
    return [qs.query_text(c, top_k=top_k, approx=approx) for c in concepts]


def _point(
    k: int, pcs: list, embeddings: Tensor, classifier, labels: Tensor, groups: Tensor, names: Sequence[str]
) -> SweepPoint:
    pred = classifier.predict(embeddings.float()).cpu()
    per_group = group_accuracies(pred, labels, groups)
    by_name = {names[g]: acc for g, acc in sorted(per_group.items())}
    return SweepPoint(k, len(pcs), accuracy(pred, labels), min(per_group.values()), by_name, list(pcs))


@renamed_arguments(images="batches")
@torch.no_grad()
def debias_sweep(
    model,
    result: PCLensResult,
    classifier,
    concepts: Sequence[str],
    batches,
    labels: Int[Tensor, " n"] | None = None,
    groups: Int[Tensor, " n"] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    margin: float = 0.01,
    group_names: Sequence[str] | None = None,
    approx: float = 1.1,
    batch_size: int = 256,
) -> DebiasSweep:
    """Sweep the number ``K`` of top PCs per spurious concept removed, and pick a point.

    Args:
        result: PCLens fitted on ``model`` (with texts: text queries are centred by its pool mean).
        classifier: a :class:`~hookedclip.zeroshot.ZeroShotClassifier` over the task's classes.
        concepts: texts of the spurious feature, e.g. ``["a striped background", "a dotted
            background"]`` (toy) or ``["water background", "land background"]`` (Waterbirds).
        batches: ``(images, labels, groups)`` tuples (see :mod:`hookedclip.data.batches`), or
            images only (a ``[N, C, H, W]`` tensor, read ``batch_size`` at a time, or an
            iterable of batches) with ``labels`` and ``groups`` given separately.
            (Formerly ``images=``, still accepted with a deprecation warning.)
        labels, groups: class index and group index ``[N]`` of each image, when ``batches``
            holds images only.
        ks: PCs per concept to remove; the union over concepts is removed (``K = 0``, the
            unmodified model, is always measured first).
        margin: the average accuracy the pick may lose (fraction; see :meth:`DebiasSweep.pick`).
        group_names: names of the group ids (default ``"group g"``).
    """
    ks = sorted({int(k) for k in ks if int(k) > 0})
    if not ks:
        raise ValueError("give at least one K >= 1 to sweep")
    if isinstance(batches, Tensor):
        batches = batches.split(batch_size)
    stacks, labels, groups = _decomposed_with_targets(model, result, batches, labels, groups)
    n_groups = int(groups.max()) + 1
    names = list(group_names) if group_names is not None else [f"group {g}" for g in range(n_groups)]
    base = torch.cat([s.sum() for s in stacks])  # the unit embeddings, unmodified
    if base.shape[0] != labels.shape[0] or labels.shape != groups.shape:
        raise ValueError(f"{base.shape[0]} images but {labels.shape[0]} labels and {groups.shape[0]} groups")
    points = [_point(0, [], base, classifier, labels, groups, names)]
    rankings = concept_rankings(result, model, concepts, max(ks), approx)
    for k in ks:
        pcs = union([_top(r, k) for r in rankings]).pcs
        points.append(_point(k, pcs, removal_embeddings(stacks, result, pcs), classifier, labels, groups, names))
    return DebiasSweep(
        list(concepts),
        names,
        points,
        margin,
        DebiasSweep.pick(points, margin),
        int(labels.shape[0]),
        model=result.model,
    )


# --------------------------------------------------------------------------------------
# Tasks: the toy spurious split and Waterbirds
# --------------------------------------------------------------------------------------


@dataclass
class SpuriousTask:
    """Evaluation images with classes and groups, the classifier, and the spurious concepts.

    ``images`` is a tensor of preprocessed images ``[N, C, H, W]`` or a dataset of
    ``{"image": [C, H, W], ...}`` items (read in batches, never all in memory)."""

    images: Float[Tensor, "n channel height width"] | torch.utils.data.Dataset
    labels: Int[Tensor, " n"]
    groups: Int[Tensor, " n"]
    group_names: list[str]
    classifier: object
    concepts: list[str]

    def batches(self, batch_size: int = 256, workers: int = 0) -> Iterable[Tensor]:
        """The images in order, ``[B, C, H, W]`` at a time."""
        if isinstance(self.images, Tensor):
            return self.images.split(batch_size)
        loader = torch.utils.data.DataLoader(self.images, batch_size=batch_size, num_workers=workers)
        return (batch["image"] for batch in loader)


def toy_concepts(spec=None) -> list[str]:
    """The toy world's words for the spurious textures: ``["a striped background", "a dotted
    background"]``. The toy's text encoder only knows caption words, so "stripes" or "dots"
    alone would be out-of-distribution queries."""
    from hookedclip.toy.world import ATTRIBUTE_WORDS, SpuriousSpec

    spec = spec or SpuriousSpec()
    return [f"a {ATTRIBUTE_WORDS['texture'][t]} background" for t in spec.textures]


def toy_task(model, n: int = 1000, seed: int = 12345, spec=None) -> SpuriousTask:
    """``n`` images of the group-balanced toy spurious split (test split, as in
    :func:`hookedclip.toy.evaluate.evaluate`), classified circle vs square with the shape prompts."""
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.world import SpuriousSpec, ToyWorld, class_prompts
    from hookedclip.zeroshot import ZeroShotClassifier

    spec = spec or SpuriousSpec()
    world = ToyWorld(
        n, seed=seed, split="test", spurious=spec, group_balanced=True, image_size=model.cfg.vision.image_size
    )
    images = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    groups = torch.from_numpy(world.groups())
    prompts = class_prompts("shape")
    classifier = ZeroShotClassifier.from_prompts(model, {c: prompts[c] for c in spec.classes})
    return SpuriousTask(images, groups // 2, groups, spec.group_names(), classifier, toy_concepts(spec))


WATERBIRDS_CONCEPTS: tuple[str, ...] = ("water background", "land background")  # the reference's Waterbirds runs


def waterbirds_task(
    model, root: str | Path, split: str = "test", limit: int | None = None, templates: str = "openai"
) -> SpuriousTask:
    """Waterbirds ``split`` through ``model.preprocess``, classified landbird vs waterbird with
    open_clip's ImageNet ``templates`` (the reference uses the 80 OpenAI templates)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    from hookedclip.data.datasets import Waterbirds
    from hookedclip.zeroshot import ZeroShotClassifier

    if model.preprocess is None:
        raise ValueError("Waterbirds images need the model's preprocessing (model.preprocess is None)")
    data = Waterbirds(root, split, transform=model.preprocess)
    if limit is not None and limit < len(data):
        data = torch.utils.data.Subset(data, range(limit))
        labels, groups = data.dataset.labels[:limit], data.dataset.groups[:limit]
    else:
        labels, groups = data.labels, data.groups
    chosen = OPENAI_IMAGENET_TEMPLATES if templates == "openai" else SIMPLE_IMAGENET_TEMPLATES
    classifier = ZeroShotClassifier.from_classnames(model, ["landbird", "waterbird"], chosen)
    return SpuriousTask(
        data,
        torch.from_numpy(labels),
        torch.from_numpy(groups),
        Waterbirds.group_names(),
        classifier,
        list(WATERBIRDS_CONCEPTS),
    )


__all__ = [
    "SweepPoint",
    "DebiasSweep",
    "debias_sweep",
    "decompose_batches",
    "removal_embeddings",
    "concept_rankings",
    "DEFAULT_KS",
    "SpuriousTask",
    "toy_concepts",
    "toy_task",
    "waterbirds_task",
    "WATERBIRDS_CONCEPTS",
]
