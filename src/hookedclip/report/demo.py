"""``hookedclip demo``: a report on the shipped toy model, one section per analysis.

Each section is a function ``(ctx) -> Section`` that writes its figures into the report
folder; method issues add theirs to :data:`SECTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hookedclip import plotting
from hookedclip.report import viz
from hookedclip.report.viz import Section


@dataclass
class DemoContext:
    """What every section shares: the model, held-out toy images and their attributes."""

    model: object
    out_dir: Path
    images: np.ndarray  # uint8 [N, H, W, 3]
    tensors: torch.Tensor  # model inputs [N, 3, H, W]
    attributes: list
    captions: list[str]
    seed: int
    progress: bool = False  # progress bars inside the slow sections
    cache: dict = field(default_factory=dict)  # results shared between sections

    def labels(self, attribute: str) -> np.ndarray:
        return np.array([a.labels()[attribute] for a in self.attributes])


def _steps(ctx: DemoContext, items, desc: str):
    """``items`` with a transient progress bar when the demo shows progress."""
    return tqdm(items, desc=desc, disable=not ctx.progress, leave=False)


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

    result = evaluate(ctx.model, n=len(ctx.images), seed=ctx.seed)
    ctx.cache["zero_shot"] = result
    plotting.bar_chart(
        result["accuracy"],
        ctx.out_dir / "zero_shot.png",
        "zero-shot top-1 (%)",
        "Zero-shot accuracy per attribute",
        chance=result["chance"],
    )
    sp = result["spurious"]
    rows = [[name, f"{100 * acc:.1f}%"] for name, acc in sp["groups"].items()]
    rows += [["average", f"{100 * sp['average']:.1f}%"], ["worst group", f"{100 * sp['worst_group']:.1f}%"]]
    return Section(
        "Zero-shot accuracy",
        [
            f"Each attribute is classified by comparing the image embedding with the text embeddings of its "
            f"class prompts (mean of normalised prompt embeddings), on {result['n']} fresh held-out images.",
            f"Spurious split: during training, a {sp['classes'][0]} is mostly on {sp['textures'][0]} and a "
            f"{sp['classes'][1]} on {sp['textures'][1]}. On a test set balanced over the four (shape, texture) "
            f"groups, the {' vs '.join(sp['classes'])} classifier's worst group trails the average by "
            f"{100 * sp['gap']:.1f} points: the gap that debiasing methods should close.",
        ],
        figures=[("zero_shot.png", "Zero-shot top-1 per attribute; dashed: chance.")],
        tables=[(["spurious-split group", "accuracy"], rows)],
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
            )
        ],
        tables=[
            (
                ["layer", "attention", "MLP"],
                [[str(l), f"{100 * a:.1f}%", f"{100 * m:.1f}%"] for l, (a, m) in enumerate(zip(attn, mlp))],
            )
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
    plotting.head_heatmaps(
        grids,
        ctx.out_dir / "head_probes.png",
        "Held-out linear probe accuracy of each head's CLS output",
        baseline=majority,
        baseline_label="majority class",
    )
    best = [
        [
            a,
            f"L{divmod(int(g.argmax()), cfg.heads)[0]}H{divmod(int(g.argmax()), cfg.heads)[1]}",
            f"{100 * g.max():.1f}%",
        ]
        for a, g in grids.items()
    ]
    return Section(
        "Which heads carry which attribute",
        [
            "A logistic-regression probe is trained on half of the images to read each attribute from one "
            "head's output at the CLS token (hook_result), and scored on the other half. Bright cells: heads "
            "whose output alone identifies the attribute. The baseline in each panel's title is the majority-class "
            "rate, what a probe that always answers the commonest class scores."
        ],
        figures=[("head_probes.png", "Held-out probe accuracy (%) per head (rows: layers, columns: heads).")],
        tables=[(["attribute", "best head", "probe accuracy"], best)],
    )


def section_ablation_curve(ctx: DemoContext) -> Section:
    from hookedclip.ablation import component_means
    from hookedclip.ablation_curve import mean_ablation_curve
    from hookedclip.toy.evaluate import binomial_se
    from hookedclip.toy.world import class_prompts
    from hookedclip.zeroshot import ZeroShotClassifier

    L = ctx.model.cfg.vision.layers
    order = ["embed"] + [part for l in range(L) for part in (f"L{l}", f"mlp{l}")]
    half = len(ctx.tensors) // 2  # means from one half, accuracy on the other
    fit = [ctx.tensors[:half]]
    curves, chance = {}, {}
    means = component_means(ctx.model, fit, order, mode="direct")
    for attribute in _steps(ctx, ("shape", "color", "texture"), "ablation curves"):
        prompts = class_prompts(attribute)
        classifier = ZeroShotClassifier.from_prompts(ctx.model, prompts)
        data = [(ctx.tensors[half:], torch.as_tensor(ctx.labels(attribute)[half:]))]
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
    )
    n_test = len(ctx.tensors) - half
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
            "changes; ln_post statistics frozen). Means come from one half of the images, accuracy from the other. "
            'Where a curve drops, the layers just ablated carry that attribute into the embedding. "embed" is the '
            "embedding slot (patch, class and position embeddings after ln_pre)." + below_text
        ],
        figures=[
            (
                "ablation_curve.png",
                f"Zero-shot accuracy per attribute on {n_test} images as more components "
                "are mean-ablated, left to right; dotted: chance.",
            )
        ],
    )


def section_textspan(ctx: DemoContext) -> Section:
    from hookedclip.data.vocab import toy_text_pool
    from hookedclip.methods.textspan import text_span_heads

    L = ctx.model.cfg.vision.layers
    batches = [ctx.tensors[i : i + 256] for i in range(0, len(ctx.tensors), 256)]
    results = text_span_heads(ctx.model, batches, toy_text_pool(), components=[f"L{L - 1}"], n_texts=3, rank=None)
    rows = [
        [label, "; ".join(r.texts), f"{100 * r.explained_fraction[-1].item():.0f}%"] for label, r in results.items()
    ]
    return Section(
        "TextSpan: texts that span each head",
        [
            f"For every head of the last layer, TextSpan greedily picks texts from a pool of {len(toy_text_pool())} toy-world "
            "descriptions and distractor words whose span explains the most variance of the head's direct contribution "
            "(hookedclip.methods.textspan; statistics streamed, never stored)."
        ],
        tables=[(["head", "top texts, in selection order", "variance explained"], rows)],
    )


def _pclens_result(ctx: DemoContext):
    """PCLens on the demo images, every head, labelled with the toy text pool (shared)."""
    if "pclens" not in ctx.cache:
        from hookedclip.data.vocab import toy_text_pool
        from hookedclip.methods import pclens

        L = ctx.model.cfg.vision.layers
        ctx.cache["pclens"] = pclens.fit(
            ctx.model, ctx.tensors.split(256), components=[f"L0-{L - 1}"], texts=toy_text_pool(), n_texts=3
        )
    return ctx.cache["pclens"]


def section_pclens(ctx: DemoContext) -> Section:
    from hookedclip.methods import pclens
    from hookedclip.methods.pclens.debias import debias_sweep, toy_task
    from hookedclip.zeroshot import embed_images

    phase = tqdm(total=3, desc="PCLens: fit", disable=not ctx.progress, leave=False)
    result = _pclens_result(ctx)
    phase.update()
    phase.set_description("PCLens: top images")
    steps = max(min(8, p.k) for p in result.heads.values())
    last = f"L{ctx.model.cfg.vision.layers - 1}"
    curves = {
        label: (p.strength_rel[:steps] / 100).tolist()
        for label, p in result.heads.items()
        if label.startswith(last) or label in ("L2H0", "L2H1")
    }
    plotting.line_curves(
        curves,
        [str(i) for i in range(steps)],
        ctx.out_dir / "pclens_strengths.png",
        "PC strengths (share of the head's retained variance)",
        "principal component",
        ylabel="strength (%)",
    )
    # The PC that the text query ranks first for the texture: its labels and images.
    task = toy_task(ctx.model, n=max(200, min(1000, 2 * len(ctx.images))), seed=ctx.seed + 1)  # not the fit images
    first = pclens.QuerySystem(result, ctx.model).query_text(task.concepts[0], top_k=1).entries[0]
    pca = result[first.head]
    top, bottom = pclens.top_images(pca, first.pc, embed_images(ctx.model, ctx.tensors.split(256)), n=6)
    idx = torch.cat([top, bottom]).tolist()
    attrs = [ctx.attributes[i] for i in idx]  # ground truth, not the partial training captions
    captions = [
        f"{'top' if j < len(top) else 'bottom'}: {a.color} {a.shape}, {a.texture}, {a.background}"
        for j, a in enumerate(attrs)
    ]
    plotting.image_grid(ctx.images[idx], captions, ctx.out_dir / "pclens_pc.png", cols=len(top))
    lab = pca.label_of(first.pc, 3)
    label_rows = [
        ["positive" if sign == "+" else "negative", "; ".join(f"{t} ({c:+.2f})" for t, c in items)]
        for sign, items in lab.sides()
    ]  # the stronger side first
    # Remove the texture PCs and watch the spurious split's worst group.
    phase.update()
    phase.set_description("PCLens: debias sweep")
    sweep = debias_sweep(
        ctx.model,
        result,
        task.classifier,
        task.concepts,
        task.images,
        task.labels,
        task.groups,
        ks=(1, 2, 3, 5, 10, 20),
        margin=0.01,
        group_names=task.group_names,
    )
    phase.update()
    phase.close()
    sweep.plot(ctx.out_dir / "pclens_debias.png")
    rows = [
        [str(p.k), str(p.n_removed), f"{100 * p.average:.1f}%", f"{100 * p.worst_group:.1f}%"]
        + [f"{100 * p.groups[g]:.1f}%" for g in task.group_names]
        for p in sweep.points
    ]
    return Section(
        "PCLens: principal components of each head, labelled with text",
        [
            f"PCLens (hookedclip.methods.pclens) takes each head's direct contribution to the image embedding over "
            f"the {len(ctx.images)} images, keeps the principal components covering 99% of its singular values "
            f"({result.n_pcs} PCs over {len(result)} heads) and labels each PC with the texts of the toy pool most "
            "aligned with it, at both ends.",
            f'The query "{task.concepts[0]}" ranks {first.head} PC {first.pc} first. Its labels and the images '
            "that score highest and lowest on it (⟨ê, v⟩, captioned with their true attributes) agree on what it "
            "encodes (table and image strip below).",
            f'Removing the PCs of "{task.concepts[0]}" and "{task.concepts[1]}" from every head (top K per '
            f"concept) fixes the toy's planted shortcut: on {sweep.n_images} group-balanced spurious-split images the "
            f"worst group goes from {100 * sweep.baseline.worst_group:.1f}% to {100 * sweep.chosen.worst_group:.1f}% "
            f"at K = {sweep.chosen.k}, while the average goes from {100 * sweep.baseline.average:.1f}% to "
            f"{100 * sweep.chosen.average:.1f}% ({100 * (sweep.chosen.average - sweep.baseline.average):+.1f} points). "
            f"The pick is the K with the best worst group among those that raise the worst group and keep the average "
            f"above the original's minus {100 * sweep.margin:g} point(s).",
        ],
        figures=[
            (
                "pclens_strengths.png",
                "Relative strength of the first PCs (last layer and the two layer-2 heads that read the background).",
            ),
            ("pclens_pc.png", f"{first.head} PC {first.pc}: top row the highest ⟨ê, v⟩, bottom row the lowest."),
            (
                "pclens_debias.png",
                "Worst-group and average accuracy (bold) and each group's accuracy (thin) "
                "of circle vs square as the texture PCs are removed (K per concept); dashed "
                "horizontal lines: the original model's worst group and average; dotted "
                "vertical line: the pick.",
            ),
        ],
        tables=[
            (["side", f"{first.head} PC {first.pc} texts (cosine)"], label_rows),
            (["K", "PCs removed", "average", "worst group"] + task.group_names, rows),
        ],
    )


def section_segmentation(ctx: DemoContext) -> Section:
    from hookedclip.methods.segmentation import evaluate_toy, save_overlays
    from hookedclip.toy.world import ToyWorld, class_prompts, render_batch
    from hookedclip.zeroshot import ZeroShotClassifier

    n = min(200, len(ctx.images))
    L = ctx.model.cfg.vision.layers
    runs = {"predicted": {}, "true": {"use_labels": True}, "late": {"components": [f"L{L - 2}", f"L{L - 1}"]}}
    done = {
        name: evaluate_toy(ctx.model, n=n, seed=ctx.seed, **kw)
        for name, kw in _steps(ctx, runs.items(), "segmentation")
    }
    metrics, true_class, late = done["predicted"], done["true"]["model"], done["late"]["model"]
    named = (
        ("heads, map of the predicted shape", metrics["model"]),
        ("heads, map of the true shape", true_class),
        ("heads of the last two layers only, predicted shape", late),
        ("centred blob (baseline)", metrics["blob"]),
    )
    rows = [
        [name, f"{100 * m['pixel_accuracy']:.1f}%", f"{100 * m['miou']:.1f}%", f"{100 * m['map']:.1f}%"]
        for name, m in named
    ]
    gain = {k: 100 * (metrics["model"][k] - metrics["blob"][k]) for k in ("pixel_accuracy", "miou", "map")}
    size = ctx.model.cfg.vision.image_size
    world = ToyWorld(8, seed=ctx.seed, split="test", image_size=size)  # 2 rows of 4 pairs: panels big enough to read
    pixels, masks = render_batch(world.attributes(), size)
    classifier = ZeroShotClassifier.from_prompts(ctx.model, class_prompts("shape"))
    save_overlays(
        ctx.model,
        pixels,
        classifier,
        ctx.out_dir / "segmentation_overlays.png",
        masks,
        cols=4,
        labels=[a.labels()["shape"] for a in world.attributes()],
    )
    return Section(
        "Zero-shot segmentation",
        [
            "Each patch token's contribution to the predicted shape's logit, summed over the heads "
            "(hookedclip.methods.segmentation), gives a heat map; thresholded at its mean it is a foreground mask. "
            f"On {n} held-out images with exact masks it is compared with a centred Gaussian blob, the baseline "
            "that knows only that objects tend to be in the middle. With 8-pixel patches the maps are 4 x 4.",
            f"Here the predicted-shape maps differ from the blob by {gain['pixel_accuracy']:+.1f} points of pixel "
            f"accuracy, {gain['miou']:+.1f} of mIoU and {gain['map']:+.1f} of mAP: on shapes this centred and this "
            "coarse a grid, the blob is a strong baseline. Maps from the heads "
            f"of the last two layers alone differ from the blob by {100 * (late['pixel_accuracy'] - metrics['blob']['pixel_accuracy']):+.1f} "
            f"points of pixel accuracy and {100 * (late['miou'] - metrics['blob']['miou']):+.1f} of mIoU.",
        ],
        figures=[
            (
                "segmentation_overlays.png",
                "Left: image with its true contour (white). Right: heat map of the "
                "predicted shape, binarised contour dashed cyan.",
            )
        ],
        tables=[(["map", "pixel accuracy", "mIoU", "mAP"], rows)],
    )


SECTIONS: list[Callable[[DemoContext], Section]] = [
    section_samples,
    section_zero_shot,
    section_layer_shares,
    section_head_probes,
    section_ablation_curve,
    section_textspan,
    section_pclens,
    section_segmentation,
]


# the linear probes hold out half of the images, stratified: every class of 7 shapes needs a few
MIN_IMAGES = 64


def run_demo(out_dir: str | Path, model=None, n_images: int = 512, seed: int = 2024, progress: bool = True) -> Path:
    """Write the demo report into ``out_dir``; returns the path of ``index.html``."""
    if n_images < MIN_IMAGES:
        raise ValueError(
            f"n_images={n_images}: the demo needs at least {MIN_IMAGES} images (its probes train on half "
            "of them and score on the other half, every shape in both)"
        )
    from hookedclip.identity import model_identity
    from hookedclip.model.hooked import HookedCLIP
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.world import ToyWorld, caption

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else HookedCLIP.from_pretrained("toy")
    world = ToyWorld(n_images, seed=seed, split="test")
    images = world.images()
    rng = np.random.default_rng(seed)
    attributes = world.attributes()
    ctx = DemoContext(
        model=model,
        out_dir=out_dir,
        images=images,
        tensors=images_to_tensor(images, model.cfg.image_mean, model.cfg.image_std).to(model.device, model.dtype),
        attributes=attributes,
        captions=[caption(a, rng)[0] for a in attributes],
        seed=seed,
        progress=progress,
    )
    sections = []
    bar = tqdm(SECTIONS, desc="demo", disable=not progress)
    for fn in bar:
        bar.set_postfix_str(fn.__name__.removeprefix("section_"))  # which step is running
        sections.append(fn(ctx))
    meta = f"model: {model_identity(model)}; {n_images} held-out images, seed {seed}"
    return viz.write_report(out_dir, "hookedclip demo: the toy CLIP", sections, meta)
