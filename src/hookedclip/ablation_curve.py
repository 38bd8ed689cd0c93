"""Accuracy as components are mean-ablated one group after another (direct mode).

The TextSpan protocol (``specs/pclens_textspan.md`` §2.2): each component's contribution
to the normalised embedding is replaced by its dataset mean, the network is not re-run,
and zero-shot top-1 is measured after every step. Means come from the same data unless
``means`` are given (the reference's transductive convention).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hookedclip.ablation import component_means
from hookedclip._compat import renamed_arguments
from hookedclip.components import ComponentLike, select
from hookedclip.data.batches import check_reiterable, iter_images, iter_labelled
from hookedclip.decompose import decompose_image
from hookedclip.zeroshot import ZeroShotClassifier


@dataclass
class AblationCurve:
    """``accuracy[k]`` is top-1 with the first ``k`` groups mean-ablated (``accuracy[0]``: none)."""

    steps: list[str]
    accuracy: list[float]

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["n_ablated", "last_ablated", "accuracy"])
            for k, acc in enumerate(self.accuracy):
                writer.writerow([k, self.steps[k - 1] if k else "", f"{acc:.6f}"])
        return path

    def plot(self, path: str | Path, title: str = "Accumulated mean-ablation (direct)") -> Path:
        from hookedclip import plotting

        return plotting.line_curves({"accuracy": self.accuracy}, ["none", *self.steps], path, title,
                                    "mean-ablated up to and including")


@renamed_arguments(data="batches")
@torch.no_grad()
def mean_ablation_curve(
    model,
    batches,
    classifier: ZeroShotClassifier,
    components_order: Sequence[ComponentLike | Sequence[ComponentLike]],
    means: dict[str, torch.Tensor] | None = None,
) -> AblationCurve:
    """Accuracy after mean-ablating ``components_order[0]``, then also ``[1]``, and so on.

    Args:
        batches: re-iterable ``(images, labels[, groups])`` batches (a list or a DataLoader;
            see :mod:`hookedclip.data.batches`): read once for the means (unless given) and
            once for the accuracies.
        components_order: groups in ablation order, e.g. ``["L0", "L1", ...]`` (whole layers)
            or ``["mlp0", ["L3H1", "L3H2"]]``; each group is parsed by
            :func:`hookedclip.components.select`.
        means: per-label mean rows from :func:`hookedclip.ablation.component_means`
            (``mode="direct"``).
    """
    check_reiterable(batches, "mean_ablation_curve")
    groups = [[str(c) for c in select(model, g)] for g in components_order]
    labels = list(dict.fromkeys(label for g in groups for label in g))
    if means is None:
        means = component_means(model, iter_images(batches), labels, mode="direct")
    W = classifier.weights.to(model.device, model.dtype)
    correct = torch.zeros(len(groups) + 1, dtype=torch.long)
    total = 0
    for images, targets, _ in iter_labelled(batches, model):
        stack = decompose_image(model, images, components=labels)
        embedding = stack.sum()
        rows = dict(zip(stack.labels, stack.tensor))
        ablated = embedding.clone()
        predictions = [ablated @ W]
        done: set[str] = set()
        for group in groups:
            for label in (x for x in group if x not in done):
                ablated = ablated - rows[label] + means[label].to(ablated)
                done.add(label)
            predictions.append(ablated @ W)
        targets = torch.as_tensor(targets, device=embedding.device)
        correct += torch.stack([(p.argmax(-1) == targets).sum().cpu() for p in predictions])
        total += images.shape[0]
    if total == 0:
        raise ValueError("mean_ablation_curve got no data")
    steps = [g[0] if len(g) == 1 else str(components_order[i]) for i, g in enumerate(groups)]
    return AblationCurve(steps, (correct.double() / total).tolist())
