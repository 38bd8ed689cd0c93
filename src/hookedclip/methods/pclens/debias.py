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
   :meth:`DebiasSweep.pick`), on a validation set when one is given, and report it on the
   test images; optionally remove as many random PCs as a control.

The images are decomposed once; every ``K`` then rewrites the stored per-head rows with the
per-head selection formula in closed form
(:func:`~hookedclip.methods.pclens.selection.selection_embeddings`),
which is what :func:`~hookedclip.methods.pclens.selection.remove` does inside a forward pass
(tested equal), without re-running the model per ``K``.

The result (:class:`SweepPoint`, :class:`DebiasSweep`) lives in ``sweep_result`` and the tasks
(:class:`SpuriousTask`, :func:`toy_task`, :func:`waterbirds_task`) in ``spurious``; both are
importable from here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from jaxtyping import Float, Int
from torch import Tensor
from typing_extensions import Unpack

from hookedclip._compat import renamed_arguments
from hookedclip._options import completed
from hookedclip.data.batches import iter_images, iter_labelled
from hookedclip.decompose import ComponentStack, decompose_image
from hookedclip.methods.pclens.query import QueryResult, QuerySystem, union
from hookedclip.methods.pclens.result import PCLensResult
from hookedclip.methods.pclens.selection import PCSelection, selection_embeddings
from hookedclip.methods.pclens.spurious import (
    WATERBIRDS_CONCEPTS,
    SpuriousTask,
    toy_attribute_data,
    toy_concepts,
    toy_task,
    waterbirds_task,
)
from hookedclip.methods.pclens.sweep_result import DebiasSweep, SweepPoint
from hookedclip.zeroshot import accuracy, group_accuracies

#: Default sweep: PCs per concept (``K = 0`` is the unmodified model and always measured).
DEFAULT_KS: tuple[int, ...] = (1, 2, 3, 5, 8, 12, 20, 30, 50)


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


class RemovalEmbeddings:
    """:func:`removal_embeddings` for many PC sets on the same decomposed images, fast.

    The per-head formula is linear in the weights, so removing PCs ``I`` of head ``h`` from
    the all-kept embedding subtracts ``(a_h[:, I] Π_h[I, :]) V_h`` (``a_h = (φ_h − μ_h)V_hᵀ``): the
    all-kept embeddings and every head's coordinates are computed once, and each PC set then
    costs one small product per head it touches (equal to :func:`removal_embeddings`; tested).
    """

    def __init__(self, stacks: Sequence[ComponentStack], result: PCLensResult) -> None:
        self.result = result
        self.original = torch.cat([s.sum() for s in stacks]).to(torch.float64)  # the unmodified embeddings
        self.kept = removal_embeddings(stacks, result, [])  # every retained PC kept (the tails beyond k dropped)
        self.coords = {
            h: torch.cat([result[h].coordinates(s.tensor[s.labels.index(h)].to(torch.float64)) for s in stacks])
            for h in result.heads
        }

    def __call__(self, pcs: Sequence[tuple[str, int]]) -> Float[Tensor, "n d"]:
        out = self.kept.clone()
        by_head: dict[str, list[int]] = {}
        for head, i in pcs:
            by_head.setdefault(head, []).append(int(i))
        for head, idx in by_head.items():
            pca, a = self.result[head], self.coords[head][:, idx]
            out -= (a @ pca.projector[idx].to(a)) @ pca.components.to(a)
        return out


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
    sizes = {names[g]: int((groups == g).sum()) for g in sorted(per_group)}
    return SweepPoint(
        k, len(pcs), accuracy(pred, labels), min(per_group.values()), by_name, list(pcs), int(labels.shape[0]), sizes
    )


def _measured(model, result, classifier, rankings, ks, data, batch_size) -> tuple[list[SweepPoint], list, int]:
    """The sweep's points on one image set ``data = (batches, labels, groups, names)``, with
    its decomposed batches (for controls) and its number of images."""
    batches, labels, groups, names = data
    if isinstance(batches, Tensor):
        batches = batches.split(batch_size)
    stacks, labels, groups = _decomposed_with_targets(model, result, batches, labels, groups)
    names = list(names) if names is not None else [f"group {g}" for g in range(int(groups.max()) + 1)]
    base = torch.cat([s.sum() for s in stacks])  # the unit embeddings, unmodified
    if base.shape[0] != labels.shape[0] or labels.shape != groups.shape:
        raise ValueError(f"{base.shape[0]} images but {labels.shape[0]} labels and {groups.shape[0]} groups")
    points = [_point(0, [], base, classifier, labels, groups, names)]
    removed = RemovalEmbeddings(stacks, result)
    for k in ks:
        pcs = union([_top(r, k) for r in rankings]).pcs
        points.append(_point(k, pcs, removed(pcs), classifier, labels, groups, names))
    return points, (removed, labels, groups, names), int(labels.shape[0])


def random_pcs(result: PCLensResult, n: int, generator: torch.Generator) -> list[tuple[str, int]]:
    """``n`` retained PCs of the analysed heads drawn uniformly without replacement."""
    every = result.pcs()
    if n > len(every):
        raise ValueError(f"cannot draw {n} random PCs: the result retains {len(every)}")
    return [every[int(i)] for i in torch.randperm(len(every), generator=generator)[:n]]


def _random_control(result, classifier, measured, n_removed: int, draws: int, seed: int) -> list[SweepPoint]:
    removed, labels, groups, names = measured
    generator = torch.Generator().manual_seed(seed)
    points = []
    for _ in range(draws):
        pcs = random_pcs(result, n_removed, generator)
        points.append(_point(-1, pcs, removed(pcs), classifier, labels, groups, names))
    return points


@torch.no_grad()
def removal_accuracy(
    model, result: PCLensResult, batches, targets: dict, pcs: Sequence[tuple[str, int]]
) -> dict[str, tuple[float, float, int]]:
    """``{name: (original, removed, n)}``: zero-shot accuracy on the images of ``batches`` with
    the unmodified model and after removing ``pcs`` from the analysed heads, for each ``name: (classifier, labels)``
    of ``targets`` (e.g. texture accuracy after removing the texture PCs: does the model become
    blind to the texture? and what does the shape lose?). The images are decomposed once."""
    removed = RemovalEmbeddings(decompose_batches(model, result, batches), result)
    after = removed(pcs)
    out = {}
    for name, (classifier, labels) in targets.items():
        labels = torch.as_tensor(labels).cpu()
        before_acc = accuracy(classifier.predict(removed.original.float()).cpu(), labels)
        out[name] = (before_acc, accuracy(classifier.predict(after.float()).cpu(), labels), int(labels.shape[0]))
    return out


def _validation_data(validation, batch_size: int, names):
    """``(batches, labels, groups, names)`` of a validation set given as a SpuriousTask or as
    ``(batches, labels, groups)`` (labels and groups None when the batches carry them)."""
    if isinstance(validation, SpuriousTask):
        return validation.batches(batch_size), validation.labels, validation.groups, validation.group_names
    if isinstance(validation, tuple) and len(validation) == 3:
        return (*validation, names)
    raise TypeError(
        "validation= takes a SpuriousTask (e.g. toy_task(model, split='validation')) or a tuple "
        f"(batches, labels, groups); got {type(validation).__name__}"
    )


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
    validation=None,
    random_draws: int = 0,
    seed: int = 0,
) -> DebiasSweep:
    """Sweep the number ``K`` of top PCs per spurious concept removed, and pick a point.

    Args:
        result: PCLens fitted on ``model`` (with texts: text queries are centred by its pool mean).
        classifier: a :class:`~hookedclip.zeroshot.ZeroShotClassifier` over the task's classes.
        concepts: texts of the spurious feature, e.g. ``["a striped background", "a dotted
            background"]`` (toy) or ``["water background", "land background"]`` (Waterbirds).
        batches: the test images: ``(images, labels, groups)`` tuples (see
            :mod:`hookedclip.data.batches`), or images only (a ``[N, C, H, W]`` tensor, read
            ``batch_size`` at a time, or an iterable of batches) with ``labels`` and ``groups``
            given separately. (Formerly ``images=``, still accepted with a deprecation warning.)
        labels, groups: class index and group index ``[N]`` of each image, when ``batches``
            holds images only.
        ks: PCs per concept to remove; the union over concepts is removed (``K = 0``, the
            unmodified model, is always measured first).
        margin: the average accuracy the pick may lose (fraction; see :meth:`DebiasSweep.pick`).
        group_names: names of the group ids (default ``"group g"``).
        validation: the images ``K`` is chosen on: a :class:`SpuriousTask` (e.g.
            ``toy_task(model, split="validation")``) or ``(batches, labels, groups)``. Without it
            ``K`` is chosen on the test images themselves, which flatters the pick.
        random_draws: how many times to remove as many random PCs (drawn from every retained
            PC of the analysed heads, ``seed``) as the pick removes, on the test images: the
            control for "removing any PCs helps".
    """
    ks = sorted({int(k) for k in ks if int(k) > 0})
    if not ks:
        raise ValueError("give at least one K >= 1 to sweep")
    rankings = concept_rankings(result, model, concepts, max(ks), approx)
    data = (batches, labels, groups, group_names)
    points, measured, n = _measured(model, result, classifier, rankings, ks, data, batch_size)
    val_points, n_val = None, 0
    if validation is not None:
        val_data = _validation_data(validation, batch_size, measured[3])
        val_points, _, n_val = _measured(model, result, classifier, rankings, ks, val_data, batch_size)
        picked = DebiasSweep.pick(val_points, margin)
        chosen = points[val_points.index(picked)]  # the same K, measured on the test images
    else:
        chosen = DebiasSweep.pick(points, margin)
    control = _random_control(result, classifier, measured, chosen.n_removed, random_draws, seed) if chosen.k else []
    return DebiasSweep(
        list(concepts),
        measured[3],
        points,
        margin,
        chosen,
        n,
        model=result.model,
        validation=val_points,
        n_validation=n_val,
        random_control=control,
    )


class SweepOptions(TypedDict, total=False):
    """The options :func:`sweep_task` passes on to :func:`debias_sweep` (with its defaults)."""

    ks: Sequence[int]
    margin: float
    approx: float
    batch_size: int
    validation: SpuriousTask | tuple | None
    random_draws: int
    seed: int


def sweep_task(
    model,
    result: PCLensResult,
    task: SpuriousTask,
    concepts: Sequence[str] | None = None,
    workers: int = 0,
    **options: Unpack[SweepOptions],
) -> DebiasSweep:
    """:func:`debias_sweep` on ``task``: its classifier, its spurious concepts (or ``concepts``),
    its images with their labels and groups, and its group names. ``workers`` load a dataset's
    images; ``options`` are :func:`debias_sweep`'s (``ks``, ``margin``, ``validation``, ...)."""
    options = completed(debias_sweep, SweepOptions, options, "sweep_task")
    images = task.batches(options["batch_size"], workers)
    concepts = task.concepts if concepts is None else concepts
    return debias_sweep(
        model,
        result,
        task.classifier,
        concepts,
        images,
        task.labels,
        task.groups,
        group_names=task.group_names,
        **options,
    )


__all__ = [
    "SweepPoint",
    "DebiasSweep",
    "debias_sweep",
    "sweep_task",
    "SweepOptions",
    "random_pcs",
    "removal_accuracy",
    "decompose_batches",
    "removal_embeddings",
    "RemovalEmbeddings",
    "concept_rankings",
    "DEFAULT_KS",
    "SpuriousTask",
    "toy_attribute_data",
    "toy_concepts",
    "toy_task",
    "waterbirds_task",
    "WATERBIRDS_CONCEPTS",
]
