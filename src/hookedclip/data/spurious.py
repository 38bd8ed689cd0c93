"""Spurious-feature tasks: evaluation images with classes and groups, a zero-shot classifier and
the spurious concepts, for the toy spurious split and for Waterbirds. Every method that removes a
spurious feature is evaluated on them (PCLens's ``debias_sweep``, SITH's ``suppress``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor


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


def toy_task(model, n: int | None = None, seed: int | None = None, spec=None, split: str = "test") -> SpuriousTask:
    """The group-balanced toy spurious split, classified circle vs square with the shape prompts.

    The images are the canonical set of :mod:`hookedclip.toy.splits` (the same images
    ``hookedclip toy evaluate`` and the demo measure): ``split="test"`` (2000 images) or
    ``"validation"`` (1000, for choosing K), or their first ``n``. A ``seed`` other than
    the canonical one, or another ``spec``, draws a fresh sample of the split instead."""
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.splits import CANONICAL_SEED, test_set, validation_set
    from hookedclip.toy.world import SpuriousSpec, ToyWorld, class_prompts
    from hookedclip.zeroshot import ZeroShotClassifier

    if split not in ("test", "validation"):
        raise ValueError(f"split={split!r}: use 'test' (report) or 'validation' (choose)")
    size = model.cfg.vision.image_size
    if (seed is None or seed == CANONICAL_SEED) and (spec is None or spec == SpuriousSpec()):
        spec = SpuriousSpec()
        world = (test_set if split == "test" else validation_set)("spurious", n, image_size=size)
    else:
        spec = spec or SpuriousSpec()
        stream = "test" if split == "test" else "val"
        seed = CANONICAL_SEED if seed is None else seed
        world = ToyWorld(n or 2000, seed, size, split=stream, spurious=spec, group_balanced=True)
    images = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    groups = torch.from_numpy(world.groups())
    prompts = class_prompts("shape")
    classifier = ZeroShotClassifier.from_prompts(model, {c: prompts[c] for c in spec.classes})
    return SpuriousTask(images, groups // 2, groups, spec.group_names(), classifier, toy_concepts(spec))


def toy_attribute_data(
    model, attributes: Sequence[str] = ("texture", "shape"), split: str = "test", n: int | None = None
) -> tuple[Tensor, dict]:
    """``(images [N, C, H, W], {attribute: (classifier, labels [N])})``: attributes of the
    canonical "world" set (every shape, texture, colour, ...), the ``targets`` of
    PCLens's ``removal_accuracy`` (e.g. texture accuracy after the texture PCs are removed)."""
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.splits import test_set, validation_set
    from hookedclip.toy.world import class_prompts
    from hookedclip.zeroshot import ZeroShotClassifier

    if split not in ("test", "validation"):
        raise ValueError(f"split={split!r}: use 'test' or 'validation'")
    world = (test_set if split == "test" else validation_set)("world", n, image_size=model.cfg.vision.image_size)
    images = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    truth = [a.labels() for a in world.attributes()]
    targets = {
        a: (ZeroShotClassifier.from_prompts(model, class_prompts(a)), torch.tensor([t[a] for t in truth]))
        for a in attributes
    }
    return images, targets


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


__all__ = ["SpuriousTask", "toy_attribute_data", "toy_concepts", "toy_task", "waterbirds_task", "WATERBIRDS_CONCEPTS"]
