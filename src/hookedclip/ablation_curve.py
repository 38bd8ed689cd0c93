"""Accuracy as components are mean-ablated one group after another (direct mode).

TextSpan's protocol: each component's contribution to the normalised embedding is replaced
by its dataset mean, the network is not re-run, and zero-shot top-1 is measured after every
step. Means come from the same data unless ``means`` are given (transductive, as in
TextSpan's own code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hookedclip._compat import renamed_arguments
from hookedclip.ablation import component_means
from hookedclip.components import ComponentLike, select
from hookedclip.data.batches import check_reiterable, iter_labelled
from hookedclip.decompose import decompose_image
from hookedclip.identity import ModelIdentity, model_identity, model_label
from hookedclip.results import Result, finish_figure, new_figure
from hookedclip.zeroshot import ZeroShotClassifier


@dataclass(repr=False)
class AblationCurve(Result):
    """``accuracy[k]`` is top-1 with the first ``k`` groups mean-ablated (``accuracy[0]``: none);
    ``model``: the identity of the model ablated."""

    _kind = "ablation_curve"
    _json_fields = ("steps", "accuracy")

    steps: list[str]
    accuracy: list[float]
    model: ModelIdentity | None = None

    # ---- the Result protocol
    def _title(self) -> str:
        return f"Accumulated mean-ablation (direct) on {model_label(self.model)}: {len(self.steps)} steps"

    def _table(self) -> tuple[list[str], list[list]]:
        rows = [[k, self.steps[k - 1] if k else "", acc] for k, acc in enumerate(self.accuracy)]
        return ["n_ablated", "last_ablated", "accuracy"], rows

    def _repr_sizes(self) -> dict:
        return {"steps": len(self.steps)}

    def plot(self, path: str | Path | None = None, title: str = "Accumulated mean-ablation (direct)"):
        """Accuracy (%) after each step (a matplotlib ``Figure``; written to ``path`` when given)."""
        labels = ["none", *self.steps]
        fig, ax = new_figure(max(4.5, 0.38 * len(labels) + 2.5), 3.4)
        ax.plot(
            range(len(self.accuracy)), [100 * v for v in self.accuracy], marker="o", markersize=3.5, label="accuracy"
        )
        rotate = max(map(len, labels)) > 3  # rotate only labels that would collide
        ax.set_xticks(
            range(len(labels)),
            labels,
            rotation=45 if rotate else 0,
            ha="right" if rotate else "center",
            fontsize=8 if rotate else 9,
        )
        ax.set_xlabel("mean-ablated up to and including")
        ax.set_ylabel("zero-shot top-1 (%)")
        ax.set_ylim(0, 102)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        return finish_figure(fig, path)


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
        means = component_means(model, batches, labels, mode="direct")
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
    return AblationCurve(steps, (correct.double() / total).tolist(), model=model_identity(model))
