"""TransformerLens habits on the toy CLIP: a logit lens and direct logit attribution for a
zero-shot shape class, activation patching with ``start_at_layer``, and path patching
through ``hook_v_input``.

Run: python examples/transformerlens_habits.py [--n 400] [--out transformerlens_out]

The zero-shot "logit" of a class is the image embedding's dot product with that class's
text direction; a component's share of it is its direct contribution read out through the
frozen ``ln_post``, the class-token pooling and the projection (``cache.logit_attrs``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip import HookedCLIP
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.splits import test_set
from hookedclip.toy.world import ToyWorld, class_prompts
from hookedclip.zeroshot import ZeroShotClassifier, accuracy, accuracy_interval


def shape_task(model: HookedCLIP, n: int, seed: int | None = None):
    """The first ``n`` images of the canonical world test set (``seed``: a fresh test sample
    instead), their shape labels and the shape classifier (7 classes)."""
    world = test_set("world", n) if seed is None else ToyWorld(n, seed=seed, split="test")
    images = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    labels = torch.tensor([a.labels()["shape"] for a in world.attributes()])
    return images, labels, ZeroShotClassifier.from_prompts(model, class_prompts("shape"))


def logit_difference(directions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, the true class's direction minus the mean of the other classes' ``[n, d_out]``."""
    true = directions[:, labels].T
    others = (directions.sum(1, keepdim=True) - directions[:, labels]).T / (directions.shape[1] - 1)
    return true - others


def logit_lens(model, images, labels, classifier) -> dict:
    """Zero-shot accuracy (with a 95% interval) and the mean true-class score read out from the
    residual stream entering each block and after the last one."""
    _, cache = model.run_with_cache(images, names_filter=lambda n: "resid" in n or "ln_post" in n)
    stack, names = cache.accumulated_resid(return_labels=True)
    scores = torch.stack(
        [cache.logit_attrs(stack, classifier.weights[:, c]) for c in range(len(classifier.classnames))], dim=-1
    )  # [layer, image, class]
    lens = {}
    for name, per_class in zip(names, scores):
        predicted = per_class.argmax(-1)
        correct = int((predicted == labels).sum())
        lens[name] = (accuracy(predicted, labels), accuracy_interval(correct, len(labels)))
    return lens


def head_attribution(model, images, labels, classifier) -> tuple[torch.Tensor, list[str]]:
    """Each head's direct share of (true class − mean other class), averaged over images."""
    _, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith(("hook_z", "ln_post.hook_scale")))
    heads, names = cache.stack_head_results(pos_slice=0, return_labels=True)  # the class token is what is pooled
    direction = logit_difference(classifier.weights, labels)
    return cache.logit_attrs(heads, direction, pos_slice=0).mean(1), names


def patch_by_layer(model, clean, corrupted, direction) -> list[float]:
    """Activation patching with ``start_at_layer``: the corrupted run's residual stream entering
    each block, with the class token's row taken from the clean run; the share of the clean
    score difference recovered."""
    clean_score = (model(clean) * direction).sum(-1)
    corrupt_score = (model(corrupted) * direction).sum(-1)
    recovered = []
    for layer in range(model.cfg.n_layers + 1):
        stream = model(corrupted, stop_at_layer=layer).clone()
        stream[:, 0] = model(clean, stop_at_layer=layer)[:, 0]
        patched = (model(stream, start_at_layer=layer) * direction).sum(-1)
        recovered.append(float(((patched - corrupt_score) / (clean_score - corrupt_score)).mean()))
    return recovered


def path_patch_values(model, clean, corrupted, direction, layer: int, head: int) -> float:
    """Path patching: head ``(layer, head)`` reads its values from the clean image while its
    queries, keys and every other head read the corrupted one; the share of the clean score
    difference recovered."""
    _, cache = model.run_with_cache(clean, names_filter=f"visual.blocks.{layer}.hook_resid_pre")
    clean_resid = cache["resid_pre", layer]

    def values_from_clean(x, hook):
        x[:, :, head] = clean_resid
        return x

    clean_score = (model(clean) * direction).sum(-1)
    corrupt_score = (model(corrupted) * direction).sum(-1)
    patched = model.run_with_hooks(corrupted, fwd_hooks=[(f"visual.blocks.{layer}.hook_v_input", values_from_clean)])
    return float((((patched * direction).sum(-1) - corrupt_score) / (clean_score - corrupt_score)).mean())


def plot(lens: dict, attribution: torch.Tensor, names: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    labels = list(lens)
    acc = [100 * lens[k][0] for k in labels]
    low = [100 * (lens[k][0] - lens[k][1][0]) for k in labels]
    high = [100 * (lens[k][1][1] - lens[k][0]) for k in labels]
    left.errorbar(range(len(labels)), acc, yerr=[low, high], marker="o", capsize=3, label="read-out accuracy")
    left.axhline(100 / 7, color="grey", linestyle=":", label="chance (7 shapes)")
    left.legend(fontsize=8, loc="upper left")
    left.set_xticks(range(len(labels)), labels)
    left.set_xlabel("residual stream read out (entering block l; final = after the last)")
    left.set_ylabel("shape zero-shot accuracy (%)")
    left.set_ylim(0, 100)
    left.set_title("Logit lens (95% intervals)")
    left.grid(alpha=0.3)
    order = torch.argsort(attribution.abs(), descending=True)[:12]
    right.bar(
        range(len(order)),
        attribution[order].tolist(),
        color=["#1f3b73" if v > 0 else "#C44E52" for v in attribution[order].tolist()],
    )
    right.set_xticks(range(len(order)), [names[i] for i in order], rotation=45, ha="right", fontsize=8)
    right.set_ylabel("direct share of ⟨e, true − mean other⟩")
    right.set_title("Direct attribution of the shape score: top 12 heads")
    right.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=130)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="first N canonical world test images (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=Path("transformerlens_out"), help="folder for the figure (default: %(default)s)"
    )
    parser.add_argument("--head", default="L3H2", help="the head whose value path is patched (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = HookedCLIP.from_pretrained("toy")
    images, labels, classifier = shape_task(model, args.n)
    with torch.no_grad():
        lens = logit_lens(model, images, labels, classifier)
        attribution, names = head_attribution(model, images, labels, classifier)
        # Patching pairs: each image against an image of another shape, scored on the clean shape.
        partner = torch.tensor([int(torch.nonzero(labels != y)[0]) for y in labels])
        direction = logit_difference(classifier.weights, labels)
        recovered = patch_by_layer(model, images, images[partner], direction)
        layer, head = int(args.head[1:].split("H")[0]), int(args.head.split("H")[1])
        path_share = path_patch_values(model, images, images[partner], direction, layer, head)

    print(
        f"logit lens on the first {args.n} canonical world test images (shape, 7 classes, chance 14.3%; "
        "[95% Wilson interval]):"
    )
    for name, (acc, (low, high)) in lens.items():
        print(f"  {name:>10}: {100 * acc:5.1f}%  [{100 * low:.1f}, {100 * high:.1f}]")
    print("heads with the largest direct share of the (true − mean other) shape score:")
    for i in torch.argsort(attribution, descending=True)[:5]:
        print(f"  {names[i]}: {float(attribution[i]):+.3f}")
    print("patching the class token's residual stream from the clean image, by block entered:")
    print("  " + "  ".join(f"{layer}: {100 * r:.0f}%" for layer, r in enumerate(recovered)) + " of the score gap")
    print(f"path patching {args.head}'s values from the clean image recovers {100 * path_share:.0f}% of the gap")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(lens, attribution, names, args.out / "logit_lens_dla.png")
    print(f"figure: {args.out / 'logit_lens_dla.png'}")
    return {
        "lens": lens,
        "attribution": dict(zip(names, attribution.tolist())),
        "recovered": recovered,
        "path_share": path_share,
    }


if __name__ == "__main__":
    main()
