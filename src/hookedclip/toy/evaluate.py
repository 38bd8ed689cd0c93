"""Zero-shot evaluation of a toy CLIP on the canonical held-out toy-world sets (:mod:`hookedclip.toy.splits`)."""

from __future__ import annotations

import numpy as np
import torch

from hookedclip.toy.splits import CANONICAL_SEED, TEST_SIZES, test_set, validation_set
from hookedclip.toy.world import SHAPES, SpuriousSpec, ToyWorld, class_prompts
from hookedclip.zeroshot import ZeroShotClassifier, accuracy, accuracy_text, group_accuracies

EVAL_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "texture", "background", "size", "position")
EVAL_SEED = CANONICAL_SEED  # the canonical test sets' seed (the test split never overlaps training)


@torch.no_grad()
def _embed(model, world: ToyWorld, batch_size: int) -> torch.Tensor:
    from hookedclip.toy.model import images_to_tensor

    mean, std = tuple(model.cfg.image_mean), tuple(model.cfg.image_std)
    out = []
    for start in range(0, len(world), batch_size):
        images = world.images(range(start, min(start + batch_size, len(world))))
        out.append(model.encode_image(images_to_tensor(images, mean, std).to(model.device, model.dtype)))
    return torch.cat(out)


def _world(split: str, n: int | None, seed: int | None, spec: SpuriousSpec, validation: bool) -> ToyWorld:
    """The canonical test (or validation) set of ``split`` (``seed`` None or the canonical
    seed), else a fresh test sample of the same split drawn with ``seed``."""
    if validation:
        return validation_set(split, n)
    if seed is None or (seed == CANONICAL_SEED and spec == SpuriousSpec()):
        return test_set(split, n)
    n = TEST_SIZES[split] if n is None else n
    if split == "world":
        return ToyWorld(n, seed=seed, split="test")
    return ToyWorld(n, seed=seed, split="test", spurious=spec, group_balanced=True)


@torch.no_grad()
def evaluate(
    model,
    n: int | None = None,
    seed: int | None = None,
    attributes: tuple[str, ...] = EVAL_ATTRIBUTES,
    spurious: SpuriousSpec | None = None,
    n_spurious: int | None = None,
    batch_size: int = 500,
    validation: bool = False,
) -> dict:
    """Zero-shot accuracy of each attribute and the spurious-split accuracies.

    ``model``: a HookedCLIP (e.g. ``HookedCLIP.from_pretrained("toy")``). By default the images
    are the canonical test sets (:func:`hookedclip.toy.splits.test_set`): ``n`` (default all
    2000) images of the "world" split, classified per attribute with
    ``ZeroShotClassifier.from_prompts(model, class_prompts(attr))``, and ``n_spurious`` (default
    all 2000) of the group-balanced "spurious" split, classified circle-vs-square (the
    SpuriousSpec's classes) with the shape prompts. A ``seed`` other than
    :data:`~hookedclip.toy.splits.CANONICAL_SEED` draws a fresh test sample instead (to check
    that the canonical numbers are not a lucky draw). ``validation=True`` measures the
    canonical validation sets instead (for choices, e.g. monitoring training).

    Returns ``{"n", "seed", "accuracy": {attr: acc}, "chance": {attr: 1/k}, "spurious": {"n",
    "average", "groups": {name: acc}, "group_n": {name: images}, "worst_group", "worst_group_n",
    "gap"}}``; accuracies are fractions (see :func:`format_table` for their 95% intervals).
    """
    was_training = model.training
    model.eval()
    spec = spurious or SpuriousSpec()
    world = _world("world", n, seed, spec, validation)
    emb = _embed(model, world, batch_size)
    labels = {a: [] for a in attributes}
    for attrs in world.attributes():
        lab = attrs.labels()
        for a in attributes:
            labels[a].append(lab[a])
    result: dict = {"n": len(world), "seed": world.seed, "accuracy": {}, "chance": {}}
    for a in attributes:
        prompts = class_prompts(a)
        clf = ZeroShotClassifier.from_prompts(model, prompts)
        pred = clf.predict(emb).cpu()
        result["accuracy"][a] = accuracy(pred, torch.tensor(labels[a]))
        result["chance"][a] = 1.0 / len(prompts)

    n_sp = n if n_spurious is None else n_spurious
    sworld = _world("spurious", n_sp, seed, spec, validation)
    semb = _embed(model, sworld, batch_size)
    groups = torch.from_numpy(sworld.groups())
    slabels = groups // 2
    shape_prompts = class_prompts("shape")
    clf = ZeroShotClassifier.from_prompts(model, {c: shape_prompts[c] for c in spec.classes})
    pred = clf.predict(semb).cpu()
    per_group = group_accuracies(pred, slabels, groups)
    names = spec.group_names()
    avg = accuracy(pred, slabels)
    worst = min(per_group, key=per_group.get)
    result["spurious"] = {
        "n": len(sworld),
        "classes": list(spec.classes),
        "textures": list(spec.textures),
        "average": avg,
        "groups": {names[g]: acc for g, acc in sorted(per_group.items())},
        "group_n": {names[g]: int((groups == g).sum()) for g in sorted(per_group)},
        "worst_group": per_group[worst],
        "worst_group_n": int((groups == worst).sum()),
        "gap": avg - per_group[worst],
    }
    model.train(was_training)
    return result


def format_table(result: dict) -> str:
    """A plain-text table of :func:`evaluate`'s result, each accuracy with its 95% (Wilson) interval."""
    n = result["n"]
    lines = [
        f"zero-shot accuracy on {n} held-out images (test split, seed {result['seed']}), [95% interval]",
        f"  {'attribute':<12}{'accuracy':<24}{'chance':>7}",
    ]
    for a, acc in result["accuracy"].items():
        lines.append(f"  {a:<12}{accuracy_text(acc, n):<24}{result['chance'][a] * 100:>6.1f}%")
    sp = result["spurious"]
    lines.append(f"spurious split ({' vs '.join(sp['classes'])}, group-balanced, n={sp['n']})")
    group_n = sp.get("group_n") or {name: sp["n"] // len(sp["groups"]) for name in sp["groups"]}
    for name, acc in sp["groups"].items():
        lines.append(f"  {name:<22}{accuracy_text(acc, group_n[name])}")
    worst_n = sp.get("worst_group_n", min(group_n.values()))
    lines.append(f"  {'average':<22}{accuracy_text(sp['average'], sp['n'])}")
    lines.append(
        f"  {'worst group':<22}{accuracy_text(sp['worst_group'], worst_n)}   (gap {sp['gap'] * 100:.1f} points)"
    )
    return "\n".join(lines)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` items."""
    return float(np.sqrt(max(p * (1 - p), 1e-4) / n))


__all__ = ["evaluate", "format_table", "EVAL_ATTRIBUTES", "EVAL_SEED", "SHAPES"]
