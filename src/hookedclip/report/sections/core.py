"""The demo report's sections on the toy world and the core analyses: sample images, zero-shot
accuracy, where the embedding comes from, which heads carry which attribute, and accumulated
mean-ablation.
"""

from __future__ import annotations

import numpy as np
import torch

from hookedclip import plotting
from hookedclip.report.sections.context import DemoContext, progress_steps
from hookedclip.report.viz import Section
from hookedclip.zeroshot import accuracy_interval, accuracy_text


def section_samples(ctx: DemoContext) -> Section:
    n = min(24, len(ctx.images))
    plotting.image_grid(ctx.images[:n], ctx.captions[:n], ctx.out_dir / "samples.png")
    return Section(
        "The toy world",
        [
            "Procedural 32-pixel images: one coloured shape on a textured background, each with a caption "
            "that names some of its attributes. The ground truth of every image is known, so each analysis "
            "can be checked against it."
        ],
        figures=[("samples.png", f"{n} held-out images with one of their training-style captions.")],
    )


def section_zero_shot(ctx: DemoContext) -> Section:
    from hookedclip.toy.evaluate import evaluate
    from hookedclip.zeroshot import accuracy_text

    # the canonical test sets: the numbers of `hookedclip toy evaluate`
    result = evaluate(ctx.model, n=ctx.canonical_n("world"), n_spurious=ctx.canonical_n("spurious"))
    ctx.cache["zero_shot"] = result
    n = result["n"]
    plotting.bar_chart(
        result["accuracy"],
        ctx.out_dir / "zero_shot.png",
        "zero-shot top-1 (%)",
        "Zero-shot accuracy per attribute",
        chance=result["chance"],
        n=n,
    )
    attribute_rows = [
        [a, accuracy_text(acc, n), f"{100 * result['chance'][a]:.1f}%"] for a, acc in result["accuracy"].items()
    ]
    sp = result["spurious"]
    rows = [[name, accuracy_text(acc, sp["group_n"][name])] for name, acc in sp["groups"].items()]
    rows += [
        ["average", accuracy_text(sp["average"], sp["n"])],
        ["worst group", accuracy_text(sp["worst_group"], sp["worst_group_n"])],
    ]
    return Section(
        "Zero-shot accuracy",
        [
            f"Each attribute is classified by comparing the image embedding with the text embeddings of its "
            f"class prompts (mean of normalised prompt embeddings), on the {n} images of the canonical "
            "held-out test set of the world (hookedclip.toy.splits.test_set; the numbers of `hookedclip toy "
            "evaluate`). Brackets: 95% Wilson intervals.",
            f"Spurious split: during training, a {sp['classes'][0]} is mostly on {sp['textures'][0]} and a "
            f"{sp['classes'][1]} on {sp['textures'][1]}. On the canonical spurious test set ({sp['n']} images, "
            f"balanced over the four (shape, texture) groups), the {' vs '.join(sp['classes'])} classifier's "
            f"worst group trails the average by {100 * sp['gap']:.1f} points: the gap that debiasing methods "
            "should close. The PCLens section below measures the same images.",
        ],
        figures=[
            ("zero_shot.png", f"Zero-shot top-1 per attribute on {n} images; bars: 95% intervals; dashed: chance.")
        ],
        tables=[
            (["attribute", "accuracy [95% interval]", "chance"], attribute_rows),
            (["spurious-split group", "accuracy [95% interval]"], rows),
        ],
    )


def section_layer_shares(ctx: DemoContext) -> Section:
    from hookedclip.decompose import decompose_image

    stack = _batched_decomposition(ctx, decompose_image)
    unit = stack.sum()  # [N, d] unit embeddings
    shares = (stack.tensor * unit).sum(-1).mean(1).numpy()  # ⟨φ_c, ê⟩ averaged over images
    layer_stack = stack.layer_totals()
    per_label = dict(zip(layer_stack.labels, (layer_stack.tensor * unit).sum(-1).mean(1).numpy()))
    L = ctx.model.cfg.vision.layers
    attn = [per_label[f"attn{l}"] for l in range(L)]
    mlp = [per_label[f"mlp{l}"] for l in range(L)]
    embed = per_label["embed"]
    total = sum(per_label.values())
    plotting.stacked_layer_shares(
        {"attention": attn, "MLP": mlp},
        [f"layer {l}" for l in range(L)],
        ctx.out_dir / "layer_shares.png",
        f"Direct contribution of each layer (bars sum to {100 * total:.0f}%)",
        single={"embed": embed},
    )
    ctx.cache["head_shares"] = {label: float(s) for label, s in zip(stack.labels, shares)}
    cfg = ctx.model.cfg.vision
    heads = np.array([[ctx.cache["head_shares"][f"L{l}H{h}"] for h in range(cfg.heads)] for l in range(L)])
    plotting.head_heatmaps(
        {"direct share of the embedding": heads},
        ctx.out_dir / "head_shares.png",
        "Direct contribution of each head",
        vmin=min(0.0, float(heads.min())),
        vmax=float(heads.max()),
        value_label="share of the image embedding (%)",
        digits=1,
    )
    ranked = sorted(((label, v) for label, v in ctx.cache["head_shares"].items() if "H" in label), key=lambda x: -x[1])
    ctx.cache["top_share_heads"] = [label for label, _ in ranked[:2]]
    return Section(
        "Where the image embedding comes from",
        [
            "The unit image embedding is split exactly into the direct contributions of the embedding slot, "
            "every attention head and every MLP (ln_post statistics frozen at the clean run; "
            "hookedclip.decompose). A component's share is its contribution's projection on the embedding, "
            f"averaged over images; shares sum to {100 * total:.0f}%. The embedding slot (patch, class and position "
            f"embeddings after ln_pre, read directly by ln_post) holds {100 * embed:.1f}%."
        ],
        figures=[
            (
                "layer_shares.png",
                "Share of the image embedding written directly by the embedding slot (embed, grey) "
                "and by each layer's attention and MLP.",
            ),
            (
                "head_shares.png",
                "The same share for every attention head (rows: layers, columns: heads); a layer's attention "
                "share is the sum of its row.",
            ),
        ],
        tables=[
            (
                ["layer", "attention", "MLP"],
                [[str(l), f"{100 * a:.1f}%", f"{100 * m:.1f}%"] for l, (a, m) in enumerate(zip(attn, mlp))],
            ),
            (["head (largest direct shares)", "share"], [[label, f"{100 * v:.1f}%"] for label, v in ranked[:5]]),
        ],
    )


def _batched_decomposition(ctx: DemoContext, decompose_image, batch_size: int = 256):
    from hookedclip.decompose import ComponentStack

    parts = [
        decompose_image(ctx.model, ctx.tensors[i : i + batch_size]) for i in range(0, len(ctx.tensors), batch_size)
    ]
    first = parts[0]
    return ComponentStack(
        torch.cat([p.tensor for p in parts], 1),
        first.labels,
        first.bias,
        first.components,
        torch.cat([p.scale for p in parts]),
    )


def section_head_probes(ctx: DemoContext) -> Section:
    from hookedclip.names import act_name
    from hookedclip.probes import head_probe_grid

    model = ctx.model
    head_results = {act_name("result", layer) for layer in range(model.cfg.vision.layers)}
    heads = []
    for i in range(0, len(ctx.tensors), 256):
        with torch.no_grad():
            _, cache = model.run_with_cache(ctx.tensors[i : i + 256], names_filter=head_results.__contains__)
        heads.append(cache.stack_head_results(pos_slice=0))  # the cached hook_result of each head at CLS
    heads = torch.cat(heads, dim=1)
    cfg = model.cfg.vision
    grids, majority = {}, {}
    for attribute in ("shape", "color", "texture"):
        labels = ctx.labels(attribute)
        grids[attribute] = head_probe_grid(
            heads, labels, cfg.layers, cfg.heads, seed=ctx.seed, progress=ctx.progress, desc=f"probes: {attribute}"
        )
        majority[attribute] = np.bincount(labels).max() / len(labels)  # what always guessing the commonest class scores
    n_test = len(ctx.tensors) - int(len(ctx.tensors) * 0.5)  # the probes' held-out half
    half_widths = {a: wilson_half_widths(g, n_test) for a, g in grids.items()}
    plotting.head_heatmaps(
        grids,
        ctx.out_dir / "head_probes.png",
        "Held-out linear probe accuracy of each head's CLS output",
        baseline=majority,
        baseline_label="majority class",
        half_widths=half_widths,
    )
    best_heads = {a: "L{}H{}".format(*divmod(int(g.argmax()), cfg.heads)) for a, g in grids.items()}
    best = [[a, best_heads[a], accuracy_text(float(g.max()), n_test)] for a, g in grids.items()]
    widest = max(float(h.max()) for h in half_widths.values())
    ctx.cache["best_heads"] = best_heads
    attended = list(dict.fromkeys([*best_heads.values(), *ctx.cache.get("top_share_heads", [])]))
    attention_text = _attention_figure(ctx, attended)
    return Section(
        "Which heads carry which attribute",
        [
            "A logistic-regression probe is trained on half of the images to read each attribute from one "
            "head's output at the CLS token (hook_result), and scored on the other half. Bright cells: heads "
            "whose output alone identifies the attribute. The baseline in each panel's title is the majority-class "
            "rate, what a probe that always answers the commonest class scores.",
            attention_text,
        ],
        figures=[
            (
                "head_probes.png",
                f"Held-out probe accuracy (%) per head (rows: layers, columns: heads), each on the {n_test} held-out "
                "analysed images (probes need training images, so not the canonical test set). Each cell reads "
                "accuracy ± half the width of its 95% Wilson interval, in points (the widest is "
                f"±{100 * widest:.1f}); the table gives the best head's interval itself.",
            ),
            (
                "attention.png",
                "Where the heads that matter look: each row is one head, each panel the attention of its CLS "
                "query over the 4 x 4 patches (red = most attended, scaled per panel) on the same four images.",
            ),
        ],
        tables=[(["attribute", "best head", "probe accuracy [95% interval]"], best)],
    )


def wilson_half_widths(accuracies: np.ndarray, n: int) -> np.ndarray:
    """Half the width of each accuracy's 95% Wilson interval on ``n`` items (same shape, fractions)."""
    flat = [np.subtract(*reversed(accuracy_interval(round(v * n), n))) / 2 for v in accuracies.flat]
    return np.reshape(flat, accuracies.shape)


def _attention_figure(ctx: DemoContext, heads: list[str], n_images: int = 4) -> str:
    """Draw ``attention.png`` (the CLS row of each head's attention pattern on a few images) and
    return the sentence that introduces it."""
    from hookedclip.names import act_name

    layers = sorted({int(h[1 : h.index("H")]) for h in heads})
    names = {act_name("pattern", layer) for layer in layers}
    with torch.no_grad():
        _, cache = ctx.model.run_with_cache(ctx.tensors[:n_images], names_filter=names.__contains__)
    side = ctx.tensors.shape[-1] // ctx.model.cfg.vision.patch_size  # the patch grid's side
    maps = []
    for head in heads:
        layer, h = int(head[1 : head.index("H")]), int(head[head.index("H") + 1 :])
        row = cache[act_name("pattern", layer)][:, h, 0, 1:]  # CLS query over the patch keys
        maps.append(row.reshape(-1, side, side).float().cpu().numpy())
    plotting.attention_grid(ctx.images[:n_images], np.stack(maps), heads, ctx.out_dir / "attention.png")
    return (
        "Attention patterns of the heads this page points to (the best probe head of each attribute and the "
        f"heads with the largest direct share: {', '.join(heads)}) on {n_images} images, in the figure below."
    )


def section_ablation_curve(ctx: DemoContext) -> Section:
    from hookedclip.ablation import component_means
    from hookedclip.ablation_curve import mean_ablation_curve
    from hookedclip.toy.evaluate import binomial_se
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.splits import test_set
    from hookedclip.toy.world import class_prompts
    from hookedclip.zeroshot import ZeroShotClassifier

    L = ctx.model.cfg.vision.layers
    order = ["embed"] + [part for l in range(L) for part in (f"L{l}", f"mlp{l}")]
    # means from the analysed images, accuracy on the canonical world test set (or its first n_test)
    means = component_means(ctx.model, [ctx.tensors], order, mode="direct")
    world = test_set("world", ctx.canonical_n("world"), image_size=ctx.model.cfg.vision.image_size)
    test_images = images_to_tensor(world.images(), ctx.model.cfg.image_mean, ctx.model.cfg.image_std)
    test_images = test_images.to(ctx.model.device, ctx.model.dtype)
    curves, chance = {}, {}
    for attribute in progress_steps(ctx, ("shape", "color", "texture"), "ablation curves"):
        prompts = class_prompts(attribute)
        classifier = ZeroShotClassifier.from_prompts(ctx.model, prompts)
        labels = torch.tensor([a.labels()[attribute] for a in world.attributes()])
        data = list(zip(test_images.split(500), labels.split(500)))
        curves[attribute] = mean_ablation_curve(ctx.model, data, classifier, order, means=means).accuracy
        chance[attribute] = 1 / len(prompts)
    labels = ["none"] + [
        f"attn {s[1:]}" if s.startswith("L") else f"mlp {s[3:]}" if s.startswith("mlp") else s for s in order
    ]
    plotting.line_curves(
        curves,
        labels,
        ctx.out_dir / "ablation_curve.png",
        "Accumulated mean-ablation (direct mode)",
        "mean-ablated up to and including (embed: the embedding slot)",
        chance=chance,
        n=len(world),
    )
    n_test = len(world)
    below = [
        f"{a} falls to {100 * min(c):.1f}% after {labels[int(np.argmin(c))]}, below its chance of "
        f"{100 * chance[a]:.1f}%"
        for a, c in curves.items()
        if min(c) < chance[a] - 2 * binomial_se(chance[a], n_test)
    ]
    joined = "; ".join(below)
    below_text = (
        ""
        if not below
        else " " + joined[0].upper() + joined[1:] + ": the components not yet ablated then "
        "push the embedding away from the true class (a constant guess would score about chance), until "
        "they are ablated too."
    )
    return Section(
        "Which layers matter: accumulated mean-ablation",
        [
            "Components are replaced by their mean contribution one after another, from the embedding slot to "
            "the last layer, in the direct mode of TextSpan (only each component's direct path into the embedding "
            "changes; ln_post statistics frozen). Means come from the analysed images, accuracy from the canonical "
            "world test set. "
            'Where a curve drops, the layers just ablated carry that attribute into the embedding. "embed" is the '
            "embedding slot (patch, class and position embeddings after ln_pre)." + below_text
        ],
        figures=[
            (
                "ablation_curve.png",
                f"Zero-shot accuracy per attribute on {n_test} images of the canonical world test set as more components "
                "are mean-ablated, left to right; shaded: 95% intervals; dotted: chance.",
            )
        ],
    )


__all__ = [
    "section_samples",
    "section_zero_shot",
    "section_layer_shares",
    "section_head_probes",
    "section_ablation_curve",
]
