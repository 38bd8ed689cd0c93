"""Zero-shot evaluation of a toy CLIP on fresh held-out toy-world images."""

from __future__ import annotations

import numpy as np
import torch

from hookedclip.toy.world import SHAPES, SpuriousSpec, ToyWorld, class_prompts
from hookedclip.zeroshot import ZeroShotClassifier, accuracy, group_accuracies, worst_group_accuracy

EVAL_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "texture", "background", "size", "position")
EVAL_SEED = 12345  # default held-out seed (the test split never overlaps training)


@torch.no_grad()
def _embed(model, world: ToyWorld, batch_size: int) -> torch.Tensor:
    from hookedclip.toy.model import images_to_tensor

    mean, std = tuple(model.cfg.image_mean), tuple(model.cfg.image_std)
    out = []
    for start in range(0, len(world), batch_size):
        images = world.images(range(start, min(start + batch_size, len(world))))
        out.append(model.encode_image(images_to_tensor(images, mean, std).to(model.device, model.dtype)))
    return torch.cat(out)


@torch.no_grad()
def evaluate(
    model,
    n: int = 2000,
    seed: int = EVAL_SEED,
    attributes: tuple[str, ...] = EVAL_ATTRIBUTES,
    spurious: SpuriousSpec | None = None,
    n_spurious: int | None = None,
    batch_size: int = 500,
) -> dict:
    """Zero-shot accuracy of each attribute and the spurious-split accuracies.

    ``model``: a HookedCLIP (e.g. ``HookedCLIP.from_pretrained("toy")``). Images are ``n``
    items of ``ToyWorld(split="test", seed=seed)``, classified per attribute with
    ``ZeroShotClassifier.from_prompts(model, class_prompts(attr))``. The spurious split is
    ``n_spurious`` (default ``n``) items of the group-balanced test split, classified
    circle-vs-square (the SpuriousSpec's classes) with the shape prompts.

    Returns ``{"n", "seed", "accuracy": {attr: acc}, "chance": {attr: 1/k},
    "spurious": {"n", "average", "groups": {name: acc}, "worst_group", "gap"}}``.
    """
    was_training = model.training
    model.eval()
    world = ToyWorld(n, seed=seed, split="test")
    emb = _embed(model, world, batch_size)
    labels = {a: [] for a in attributes}
    for attrs in world.attributes():
        lab = attrs.labels()
        for a in attributes:
            labels[a].append(lab[a])
    result: dict = {"n": n, "seed": seed, "accuracy": {}, "chance": {}}
    for a in attributes:
        prompts = class_prompts(a)
        clf = ZeroShotClassifier.from_prompts(model, prompts)
        pred = clf.predict(emb).cpu()
        result["accuracy"][a] = accuracy(pred, torch.tensor(labels[a]))
        result["chance"][a] = 1.0 / len(prompts)

    spec = spurious or SpuriousSpec()
    n_sp = n if n_spurious is None else n_spurious
    sworld = ToyWorld(n_sp, seed=seed, split="test", spurious=spec, group_balanced=True)
    semb = _embed(model, sworld, batch_size)
    groups = torch.from_numpy(sworld.groups())
    slabels = groups // 2
    shape_prompts = class_prompts("shape")
    clf = ZeroShotClassifier.from_prompts(model, {c: shape_prompts[c] for c in spec.classes})
    pred = clf.predict(semb).cpu()
    per_group = group_accuracies(pred, slabels, groups)
    names = spec.group_names()
    avg = accuracy(pred, slabels)
    wga = worst_group_accuracy(pred, slabels, groups)
    result["spurious"] = {
        "n": n_sp,
        "classes": list(spec.classes),
        "textures": list(spec.textures),
        "average": avg,
        "groups": {names[g]: acc for g, acc in sorted(per_group.items())},
        "worst_group": wga,
        "gap": avg - wga,
    }
    model.train(was_training)
    return result


def format_table(result: dict) -> str:
    """A plain-text table of :func:`evaluate`'s result."""
    lines = [
        f"zero-shot accuracy on {result['n']} held-out images (test split, seed {result['seed']})",
        f"  {'attribute':<12}{'accuracy':>10}{'chance':>9}",
    ]
    for a, acc in result["accuracy"].items():
        lines.append(f"  {a:<12}{acc * 100:>9.1f}%{result['chance'][a] * 100:>8.1f}%")
    sp = result["spurious"]
    lines.append(f"spurious split ({' vs '.join(sp['classes'])}, group-balanced, n={sp['n']})")
    for name, acc in sp["groups"].items():
        lines.append(f"  {name:<22}{acc * 100:>6.1f}%")
    lines.append(f"  {'average':<22}{sp['average'] * 100:>6.1f}%")
    lines.append(f"  {'worst group':<22}{sp['worst_group'] * 100:>6.1f}%   (gap {sp['gap'] * 100:.1f} points)")
    return "\n".join(lines)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` items."""
    return float(np.sqrt(max(p * (1 - p), 1e-4) / n))


__all__ = ["evaluate", "format_table", "EVAL_ATTRIBUTES", "EVAL_SEED", "SHAPES"]
