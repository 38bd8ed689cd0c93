"""The demo report's sections on the methods: TextSpan, PCLens (with its debiasing sweep) and
zero-shot segmentation.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from hookedclip import plotting
from hookedclip.report.sections.context import DemoContext, progress_steps
from hookedclip.report.viz import Section


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
        for name, kw in progress_steps(ctx, runs.items(), "segmentation")
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


__all__ = ["section_textspan", "section_pclens", "section_segmentation"]
