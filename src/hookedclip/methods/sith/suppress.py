"""Suppressing singular vectors picked by concept, measured by worst-group accuracy.

The workflow: explain the heads of a few layers (:func:`~hookedclip.methods.sith.decompose`),
pick every vector whose top concept is a spurious one (:func:`vectors_by_concept`, e.g. the
toy's "a striped background"), scale them by ``m`` (``0``: remove) through the engine
(:func:`~hookedclip.methods.sith.edit`) and compare the zero-shot accuracy of each group of a
spurious-feature task (:mod:`hookedclip.data.spurious`: the toy spurious split, Waterbirds)
before and after (:func:`suppress`). The worst group's accuracy comes with a Wilson interval.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from hookedclip.identity import ModelIdentity, model_identity, model_label
from hookedclip.methods.sith.edit import edit
from hookedclip.methods.sith.result import SithResult
from hookedclip.results import Result, finish_figure, new_figure

#: Background words of Waterbirds' places, for dictionaries of single words (those present are used).
WATERBIRDS_BACKGROUND_WORDS: tuple[str, ...] = (
    "water",
    "ocean",
    "sea",
    "lake",
    "river",
    "beach",
    "coast",
    "waves",
    "forest",
    "woods",
    "bamboo",
    "trees",
    "land",
    "water background",
    "land background",
)


def vectors_by_concept(
    results: Iterable[SithResult],
    match: Iterable[str] | Callable[[str], bool],
    side: str = "right",
    top: int = 1,
    present_only: bool = False,
) -> list[tuple[str, int]]:
    """``(head label, i)`` of every vector, over all ``results`` (one per layer), among whose
    ``top`` largest-coefficient concepts one matches ``match`` (:meth:`SithResult.select`).
    With ``present_only``, names missing from a dictionary are ignored instead of refused
    (an error remains when none is present)."""
    results = list(results)
    if not callable(match):
        names = set(match)
        if present_only:
            held = set().union(*(r.concepts for r in results)) if results else set()
            names &= held
            if not names:
                raise KeyError(f"none of {sorted(set(match))} is in the dictionary: name concepts it holds")
        match = names
    return [v for r in results for v in r.select(match, side=side, top=top)]


@dataclass(repr=False)
class Suppression(Result):
    """Per-group zero-shot accuracy of a spurious-feature task before and after an edit.

    Attributes:
        correct_before, correct_after: ``[group]`` correctly classified images.
        counts: ``[group]`` images per group.
        group_names: the groups' names.
        vectors: the edited vectors as ``"L3H1:0"``.
        multiplier: the factor their singular values were scaled by.
    """

    _kind = "sith_suppression"
    _tensor_fields = ("correct_before", "correct_after", "counts")
    _json_fields = ("group_names", "vectors", "multiplier")

    correct_before: Int[Tensor, " group"]
    correct_after: Int[Tensor, " group"]
    counts: Int[Tensor, " group"]
    group_names: list[str]
    vectors: list[str]
    multiplier: float = 0.0
    model: ModelIdentity | None = None

    def accuracies(self, when: str = "after") -> list[float]:
        correct = self.correct_after if when == "after" else self.correct_before
        return (correct.double() / self.counts.clamp_min(1)).tolist()

    def worst_group(self, when: str = "after") -> tuple[str, float, tuple[float, float]]:
        """``(group name, accuracy, 95% Wilson interval)`` of the worst group."""
        from hookedclip.zeroshot import accuracy_interval

        acc = self.accuracies(when)
        g = min(range(len(acc)), key=acc.__getitem__)
        correct = (self.correct_after if when == "after" else self.correct_before)[g]
        return self.group_names[g], acc[g], accuracy_interval(int(correct), int(self.counts[g]))

    def average(self, when: str = "after") -> float:
        correct = self.correct_after if when == "after" else self.correct_before
        return float(correct.sum()) / max(int(self.counts.sum()), 1)

    def _title(self) -> str:
        parts = []
        for when in ("before", "after"):
            name, acc, (lo, hi) = self.worst_group(when)
            parts.append(
                f"{when}: worst group {100 * acc:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({name}), "
                f"average {100 * self.average(when):.1f}%"
            )
        return (
            f"SITH suppression of {len(self.vectors)} vectors (x{self.multiplier:g}) on {int(self.counts.sum())} "
            f"images of {model_label(self.model)}; " + "; ".join(parts)
        )

    def _table(self) -> tuple[list[str], list[list]]:
        from hookedclip.zeroshot import accuracy_interval

        rows = []
        for g, name in enumerate(self.group_names):
            n = int(self.counts[g])
            row = [name, n]
            for correct in (self.correct_before[g], self.correct_after[g]):
                lo, hi = accuracy_interval(int(correct), n)
                row += [int(correct) / n, lo, hi]
            rows.append(row)
        header = ["group", "images", "accuracy_before", "low_before", "high_before"]
        return header + ["accuracy_after", "low_after", "high_after"], rows

    def _repr_sizes(self) -> dict:
        return {"vectors": len(self.vectors), "groups": len(self.group_names), "images": int(self.counts.sum())}

    def plot(self, path: str | Path | None = None):
        """Each group's accuracy before and after, with 95% intervals (a ``Figure``)."""
        _, rows = self._table()
        fig, ax = new_figure(6, 3.2)
        x = list(range(len(rows)))
        for shift, (col, label) in zip((-0.2, 0.2), ((2, "before"), (5, "after"))):
            acc = [100 * r[col] for r in rows]
            err = [[100 * (r[col] - r[col + 1]) for r in rows], [100 * (r[col + 2] - r[col]) for r in rows]]
            ax.bar([g + shift for g in x], acc, width=0.4, yerr=err, capsize=3, label=label)
        ax.set_xticks(x, self.group_names, fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"Suppressing {len(self.vectors)} singular vectors: accuracy per group", fontsize=9)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
        return finish_figure(fig, path)


@torch.no_grad()
def suppress(
    model, vectors: Sequence[tuple[str, int]], task, multiplier: float = 0.0, batch_size: int = 256
) -> Suppression:
    """Zero-shot accuracy per group of ``task`` (a :class:`~hookedclip.data.spurious.SpuriousTask`)
    without and with the singular values of ``vectors`` (``[(head label, i), ...]``) scaled by
    ``multiplier`` through :func:`~hookedclip.methods.sith.edit`."""
    vectors = list(dict.fromkeys(vectors))
    if not vectors:
        raise ValueError("no vectors to suppress: the concepts matched none (try more layers or another concept)")
    multipliers = {v: float(multiplier) for v in vectors}
    context = edit(model, multipliers)  # checks every vector before any image is read
    before = _correct(model, task, contextlib.nullcontext(), batch_size)
    after = _correct(model, task, context, batch_size)
    counts = torch.bincount(task.groups, minlength=len(task.group_names))
    return Suppression(
        correct_before=before,
        correct_after=after,
        counts=counts,
        group_names=list(task.group_names),
        vectors=[f"{label}:{i}" for label, i in vectors],
        multiplier=float(multiplier),
        model=model_identity(model),
    )


def _correct(model, task, context, batch_size: int) -> Tensor:
    from hookedclip.zeroshot import embed_images

    with context:
        embeddings = embed_images(model, task.batches(batch_size))
    hit = (task.classifier.predict(embeddings).cpu() == task.labels.cpu()).long()
    return torch.bincount(task.groups.cpu(), weights=hit, minlength=len(task.group_names)).long()
