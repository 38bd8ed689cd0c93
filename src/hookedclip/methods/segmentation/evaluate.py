"""Scoring heat maps against ground-truth masks (any labelled batches, or the toy world), and the
overlay figure."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from hookedclip import plotting
from hookedclip.components import ALL_HEADS
from hookedclip.data.batches import iter_labelled
from hookedclip.data.masks import MaskGeometry, resize_mask  # noqa: F401 (part of this module's API)
from hookedclip.methods.segmentation.maps import (
    Components,
    RowTransform,
    centre_blob,
    heatmaps,
    patch_scores,
    scores_to_maps,
)
from hookedclip.methods.segmentation.metrics import SegmentationMetrics, paired_difference


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model,
    batches: Iterable[tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]],
    classifier,
    components: Components = ALL_HEADS,
    transform: RowTransform | None = None,
    blob_sigma: float = 0.25,
) -> dict[str, dict]:
    """Metrics of the model's heat maps and of the centred-blob baseline, each dict with an
    ``"intervals"`` entry: 95% percentile-bootstrap intervals over images (:meth:`SegmentationMetrics.intervals`).
    The model's dict also has ``"vs_blob"``: its difference from the blob on the same images with a paired
    95% bootstrap interval, ``{metric: (difference, low, high)}`` (:func:`paired_difference`).

    ``batches`` yields ``(images [B, C, H, W], masks bool [B, H, W])``, optionally with a
    third entry ``targets [B]`` (class to map; default the prediction ``ĉ``). Masks must
    already be in the images' geometry (see :func:`resize_mask`).
    """
    ours, blob = SegmentationMetrics(), SegmentationMetrics()
    for images, masks, target in iter_labelled(batches, model, names=("masks", "targets")):
        ours.update(heatmaps(model, images, classifier, components, transform, target).float(), masks)
        blob.update(centre_blob(*masks.shape[-2:], sigma=blob_sigma, batch=masks.shape[0]), masks)
    metrics = {name: acc.compute() | {"intervals": acc.intervals()} for name, acc in (("model", ours), ("blob", blob))}
    metrics["model"]["vs_blob"] = paired_difference(ours, blob)
    return metrics


def toy_batches(
    model, world, batch_size: int = 64, attribute: str | None = None, classnames: Sequence[str] | None = None
) -> Iterator[tuple[Tensor, ...]]:
    """``(images, masks[, targets])`` batches of a :class:`~hookedclip.toy.world.ToyWorld`;
    with ``attribute``, targets are each image's true value of it, as indices in
    ``classnames`` (the ground-truth-class map instead of the predicted-class map)."""
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.world import render_batch

    for start in range(0, len(world), batch_size):
        attrs = world.attributes(range(start, min(start + batch_size, len(world))))
        pixels, masks = render_batch(attrs, world.image_size)
        images = images_to_tensor(pixels, model.cfg.image_mean, model.cfg.image_std)
        if attribute is None:
            yield images, torch.from_numpy(masks)
        else:
            targets = torch.tensor([list(classnames).index(getattr(a, attribute)) for a in attrs])
            yield images, torch.from_numpy(masks), targets


def evaluate_toy(
    model,
    n: int = 200,
    seed: int | None = None,
    attribute: str = "shape",
    use_labels: bool = False,
    components=ALL_HEADS,
    transform: RowTransform | None = None,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """:func:`evaluate` on the first ``n`` images of the canonical world test set
    (:func:`hookedclip.toy.splits.test_set`; masks known exactly), with the zero-shot classifier
    of ``attribute``. ``seed``: a fresh test sample instead. ``use_labels``: map the true class, not ``ĉ``."""
    from hookedclip.toy.splits import test_set
    from hookedclip.toy.world import ToyWorld, class_prompts
    from hookedclip.zeroshot import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_prompts(model, class_prompts(attribute))
    size = model.visual.cfg.image_size
    world = (
        test_set("world", n, image_size=size) if seed is None else ToyWorld(n, seed=seed, split="test", image_size=size)
    )
    batches = toy_batches(model, world, batch_size, attribute if use_labels else None, classifier.classnames)
    return evaluate(model, batches, classifier, components, transform)


# ---------------------------------------------------------------------------- figures
@torch.no_grad()
def save_overlays(
    model,
    pixels: np.ndarray,
    classifier,
    path,
    masks: np.ndarray | None = None,
    components: Components = ALL_HEADS,
    transform: RowTransform | None = None,
    target: Int[Tensor, " batch"] | int | None = None,
    cols: int = 6,
    labels: Sequence[int] | None = None,
):
    """A PNG grid for a person to look at: each uint8 image ``[N, H, W, 3]`` with its
    ground-truth contour, next to its heat map (:func:`hookedclip.plotting.heatmap_overlays`).

    Titles: ``"pred: X / true: Y"`` with the true class indices ``labels`` (in the
    classifier's classes), ``"pred: X"`` without; with an explicit ``target``, ``"map: X"``
    (the mapped class), plus ``"/ pred: ..."`` of the model. ``pixels`` must already be at the
    model's input size; they are normalised with the model's mean and std.
    """
    from hookedclip.toy.model import images_to_tensor

    images = images_to_tensor(pixels, model.cfg.image_mean, model.cfg.image_std).to(model.device, model.dtype)
    scores, predicted = patch_scores(model, images, classifier, components, transform)  # one forward for both
    maps = scores_to_maps(model, scores, predicted if target is None else target, tuple(images.shape[-2:]))
    maps, predicted = maps.float().cpu(), predicted.tolist()
    names = classifier.classnames
    captions = [f"pred: {names[c]}" for c in predicted]
    if target is not None:
        mapped = torch.as_tensor(target).expand(len(pixels)).tolist()
        captions = [f"map: {names[t]} / {c}" for t, c in zip(mapped, captions)]
    if labels is not None:
        captions = [f"{c} / true: {names[int(y)]}" for c, y in zip(captions, labels)]
    return plotting.heatmap_overlays(pixels, maps.numpy(), masks, path, captions, cols)
