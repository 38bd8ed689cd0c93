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
    n_texts = 3
    layers = [f"L{L - 2}", f"L{L - 1}"]
    batches = [ctx.tensors[i : i + 256] for i in range(0, len(ctx.tensors), 256)]
    results = text_span_heads(ctx.model, batches, toy_text_pool(), components=layers, n_texts=n_texts, rank=None)
    rows = [
        [label, "; ".join(r.texts), f"{100 * r.explained_fraction[-1].item():.0f}%"] for label, r in results.items()
    ]
    pointed = ", ".join(f"{a}: {h}" for a, h in ctx.cache.get("best_heads", {}).items())
    return Section(
        "TextSpan: texts that span each head",
        [
            f"For every head of the last two layers ({L - 2} and {L - 1}: the layers the probes and PCLens point to"
            + (f"; best probe heads {pointed}" if pointed else "")
            + f"), TextSpan greedily picks {n_texts} texts per head from a pool of {len(toy_text_pool())} toy-world "
            "descriptions and distractor words whose span explains the most variance of the head's direct contribution "
            "(hookedclip.methods.textspan; statistics streamed, never stored).",
        ],
        tables=[(["head", f"top {n_texts} texts, in selection order", "variance explained"], rows)],
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
    phase = tqdm(total=3, desc="PCLens: fit", disable=not ctx.progress, leave=False)
    result = _pclens_result(ctx)
    phase.update()
    phase.set_description("PCLens: top images")
    strengths = _pclens_strengths(ctx, result)
    pc_text, pc_figures, label_table = _pclens_pc(ctx, result)
    phase.update()
    phase.set_description("PCLens: debias sweep")
    debias_text, debias_tables = _pclens_debias(ctx, result)
    phase.update()
    phase.close()
    return Section(
        "PCLens: principal components of each head, labelled with text",
        [
            f"PCLens (hookedclip.methods.pclens) takes each head's direct contribution to the image embedding over "
            f"the {len(ctx.images)} images, keeps the principal components covering 99% of its singular values "
            f"({result.n_pcs} PCs over {len(result)} heads) and labels each PC with the texts of the toy pool most "
            "aligned with it, at both ends.",
            *pc_text,
            *debias_text,
        ],
        figures=[
            (
                "pclens_strengths.png",
                f"Relative strength of the first PCs of {', '.join(strengths)} (share of each head's retained "
                "variance).",
            ),
            *pc_figures,
            (
                "pclens_debias.png",
                "Test worst-group and average accuracy (bold, shaded: 95% intervals) and each group's accuracy "
                "(thin) of circle vs square as the texture PCs are removed (K per concept); dotted red: the "
                "validation worst group, on which K is picked; dashed horizontal lines: the original model's "
                "worst group and average; dotted vertical line: the pick.",
            ),
        ],
        tables=[label_table, *debias_tables],
    )


def _pclens_strengths(ctx: DemoContext, result) -> list[str]:
    """Draw the strength curves of the heads the page points to (the last layer's and the best
    probe heads); returns their labels."""
    steps = max(min(8, p.k) for p in result.heads.values())
    last = f"L{ctx.model.cfg.vision.layers - 1}"
    pointed = set(ctx.cache.get("best_heads", {}).values())
    heads = [label for label in result.heads if label.startswith(last) or label in pointed]
    curves = {label: (result[label].strength_rel[:steps] / 100).tolist() for label in heads}
    plotting.line_curves(
        curves,
        [str(i) for i in range(steps)],
        ctx.out_dir / "pclens_strengths.png",
        "PC strengths (share of the head's retained variance)",
        "principal component",
        ylabel="strength (%)",
    )
    return heads


def _pclens_pc(ctx: DemoContext, result):
    """The PC the texture query ranks first: its labels (cosines, weak ones marked) and two
    image rankings (full embedding, the head's own coordinate)."""
    from hookedclip.methods import pclens
    from hookedclip.methods.pclens.confidence import toy_known_words
    from hookedclip.methods.pclens.spurious import toy_concepts
    from hookedclip.report.pclens import head_contributions
    from hookedclip.zeroshot import embed_images

    concept = toy_concepts()[0]
    first = pclens.QuerySystem(result, ctx.model).query_text(concept, top_k=1).entries[0]
    pca = result[first.head]
    batches = ctx.tensors.split(256)
    rankings = {
        "pclens_pc.png": pclens.image_scores(pca, embed_images(ctx.model, batches))[:, first.pc],
        "pclens_pc_head.png": pclens.head_scores(pca, head_contributions(ctx.model, result, batches)[first.head])[
            :, first.pc
        ],
    }
    tops, bottoms = {}, {}
    for name, scores in rankings.items():
        top, bottom = pclens.extremes(scores, 6)
        tops[name], bottoms[name] = set(top.tolist()), set(bottom.tolist())
        idx = torch.cat([top, bottom]).tolist()
        captions = [
            f"{'top' if j < len(top) else 'bottom'}: {a.color} {a.shape}, {a.texture}, {a.background}"
            for j, a in enumerate(ctx.attributes[i] for i in idx)  # ground truth, not the partial captions
        ]
        plotting.image_grid(ctx.images[idx], captions, ctx.out_dir / name, cols=len(top))
    shared = len(tops["pclens_pc.png"] & tops["pclens_pc_head.png"])
    shared_bottom = len(bottoms["pclens_pc.png"] & bottoms["pclens_pc_head.png"])
    known = toy_known_words()
    rows = [
        [
            "positive" if sign == "+" else "negative",
            "; ".join(pclens.label_text(t, c, pclens.LOW_COSINE, known) for t, c in items),
        ]
        for sign, items in pca.label_of(first.pc, 3).sides()
    ]  # the stronger side first
    strength = pclens.format_strength(float(pca.strength_rel[first.pc]))
    text = [
        f'The query "{concept}" ranks {first.head} PC {first.pc} ({strength}% of the head\'s retained variance) '
        "first. Its labels (table below) and the images that score highest and lowest on it, captioned with "
        "their true attributes, show what it encodes. " + pclens.confidence_note(pclens.LOW_COSINE, known),
        f"Two image rankings: by the cosine of the full unit embedding with the PC (⟨ê, v⟩, the reference's "
        f"score) and by the head's own centred coordinate ((φ_h − μ)·v). They share {shared} of their 6 top "
        f"images and {shared_bottom} of their 6 bottom images"
        + (
            "; where they differ, ⟨ê, v⟩ also reads what other heads write along v."
            if min(shared, shared_bottom) < 6
            else "."
        ),
    ]
    figures = [
        ("pclens_pc.png", f"{first.head} PC {first.pc} ranked by ⟨ê, v⟩: top row the highest, bottom row the lowest."),
        (
            "pclens_pc_head.png",
            f"{first.head} PC {first.pc} ranked by the head's own centred coordinate: top row the highest, "
            "bottom row the lowest.",
        ),
    ]
    return text, figures, (["side", f"{first.head} PC {first.pc} texts (cosine)"], rows)


def _pclens_debias(ctx: DemoContext, result):
    """The debiasing sweep (K chosen on the validation set, reported on the test set) and its
    controls: as many random PCs, and texture / shape accuracy with the picked PCs removed."""
    from hookedclip.methods.pclens.debias import removal_accuracy, sweep_task, toy_attribute_data, toy_task
    from hookedclip.zeroshot import accuracy_text

    task = toy_task(ctx.model, n=ctx.canonical_n("spurious"))
    validation = toy_task(ctx.model, n=ctx.canonical_n("spurious", validation=True), split="validation")
    sweep = sweep_task(
        ctx.model, result, task, ks=(1, 2, 3, 5, 10, 20), margin=0.01, validation=validation, random_draws=5
    )
    ctx.cache["debias"] = sweep
    sweep.plot(ctx.out_dir / "pclens_debias.png")
    b, c = sweep.baseline, sweep.chosen
    rows = [
        [str(p.k), str(p.n_removed), v.text(), p.text("average"), p.text()]
        for p, v in zip(sweep.points, sweep.validation)
    ]
    groups = [[g, b.text(g), c.text(g)] for g in sweep.group_names]
    controls = [
        [f"{c.n_removed} random PCs, draw {i + 1}", p.text("average"), p.text()]
        for i, p in enumerate(sweep.random_control)
    ]
    attribute_rows, texture = [], None
    if c.k:
        images, targets = toy_attribute_data(ctx.model, ("texture", "shape"), n=ctx.canonical_n("world"))
        measured = removal_accuracy(ctx.model, result, images.split(256), targets, c.removed)
        for attribute, (before, after, n) in measured.items():
            attribute_rows.append([attribute, accuracy_text(before, n), accuracy_text(after, n)])
        texture = (*measured["texture"][:2], 1 / len(targets["texture"][0].classnames))
    random_wga = [p.worst_group for p in sweep.random_control]
    text = [
        f'Removing the PCs of "{sweep.concepts[0]}" and "{sweep.concepts[1]}" from every head (top K per concept) '
        f"fixes the toy's planted shortcut. K is chosen on the canonical validation set ({sweep.n_validation} "
        f"images) and reported on the canonical spurious test set ({sweep.n_images} images, the same images as "
        f"the zero-shot section): the worst group goes from {b.text()} to {c.text()} at K = {c.k} "
        f"({c.n_removed} PCs), the average from {b.text('average')} to {c.text('average')}. The pick is the K "
        "with the best validation worst group among those that raise it and keep the validation average above "
        f"the original's minus {100 * sweep.margin:g} point(s). Brackets: 95% Wilson intervals.",
        (
            f"Controls: removing {c.n_removed} random PCs instead leaves the worst group at "
            f"{100 * min(random_wga):.1f}-{100 * max(random_wga):.1f}% over {len(random_wga)} draws (table below). "
            "On the world test set (all shapes and textures), texture accuracy goes from "
            f"{attribute_rows[0][1]} to {attribute_rows[0][2]} with the picked PCs removed (chance 25%): "
            f"{_blindness(texture)}; shape goes from {attribute_rows[1][1]} to {attribute_rows[1][2]}."
        )
        if random_wga
        else "No K qualified on the validation set, so there is nothing to control.",
    ]
    tables = [
        (["K", "PCs removed", "validation worst group", "test average", "test worst group"], rows),
        (["spurious-split group (test)", "original", f"K = {c.k} removed"], groups),
        (["control (test)", "average", "worst group"], controls),
        (["attribute (world test set)", "original", f"the {c.n_removed} picked PCs removed"], attribute_rows),
    ]
    return text, tables


def _blindness(texture: tuple[float, float, float]) -> str:
    """In words: how much texture the model keeps, from ``(before, after, chance)``."""
    before, after, chance = texture
    if after < chance + 0.1:
        return "the model becomes close to texture-blind"
    if after > before - 0.05:
        return "the model keeps reading the texture"
    return "the model loses much of the texture, not all of it"


def section_segmentation(ctx: DemoContext) -> Section:
    from hookedclip.methods.segmentation import METRIC_NAMES, difference_text, evaluate_toy, metric_text, save_overlays
    from hookedclip.toy.splits import test_set
    from hookedclip.toy.world import class_prompts, render_batch
    from hookedclip.zeroshot import ZeroShotClassifier

    n = min(200, len(ctx.images))
    L = ctx.model.cfg.vision.layers
    runs = {"predicted": {}, "true": {"use_labels": True}, "late": {"components": [f"L{L - 2}", f"L{L - 1}"]}}
    done = {
        name: evaluate_toy(ctx.model, n=n, **kw)  # the canonical world test set's first n
        for name, kw in progress_steps(ctx, runs.items(), "segmentation")
    }
    metrics, true_class, late = done["predicted"], done["true"]["model"], done["late"]["model"]
    named = (
        ("heads, map of the predicted shape", metrics["model"]),
        ("heads, map of the true shape", true_class),
        ("heads of the last two layers only, predicted shape", late),
        ("centred blob (baseline)", metrics["blob"]),
    )
    rows = [[name, *(metric_text(m, k) for k in METRIC_NAMES)] for name, m in named]
    # every run scores its own blob on the same first n images: the paired difference of each map
    differences = [[name, *(difference_text(m["vs_blob"][k]) for k in METRIC_NAMES)] for name, m in named[:3]]
    gain = {k: difference_text(metrics["model"]["vs_blob"][k]) for k in METRIC_NAMES}
    late_gain = {k: difference_text(late["vs_blob"][k]) for k in METRIC_NAMES}
    size = ctx.model.cfg.vision.image_size
    world = test_set("world", 8, image_size=size)  # 2 rows of 4 pairs: panels big enough to read
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
    grid, patch = ctx.model.cfg.vision.grid_size, ctx.model.cfg.vision.patch_size
    return Section(
        f"Zero-shot segmentation ({grid} x {grid} maps; {blob_verdict(metrics['model']['vs_blob'])})",
        [
            "Each patch token's contribution to the predicted shape's logit, summed over the heads "
            "(hookedclip.methods.segmentation), gives a heat map; thresholded at its mean it is a foreground mask. "
            f"On the first {n} images of the canonical world test set, with exact masks, it is compared with a "
            "centred Gaussian blob, the baseline that knows only that objects tend to be in the middle. With "
            f"{patch}-pixel patches the maps are {grid} x {grid}.",
            f"Here the predicted-shape maps differ from the blob by {gain['pixel_accuracy']} points of pixel "
            f"accuracy, {gain['miou']} of mIoU and {gain['map']} of mAP (brackets: 95% paired bootstrap intervals "
            "over images, both maps scored on the same resampled images; the heading's verdict counts a metric as "
            "better or worse only where its interval excludes 0): on shapes this centred and this coarse a grid, "
            "the blob is a strong baseline. Maps from the heads of the last two layers alone differ from the blob "
            f"by {late_gain['pixel_accuracy']} points of pixel accuracy, {late_gain['miou']} of mIoU and "
            f"{late_gain['map']} of mAP.",
        ],
        figures=[
            (
                "segmentation_overlays.png",
                "Left: image with its true contour (white). Right: heat map of the "
                "predicted shape, binarised contour dashed cyan.",
            )
        ],
        tables=[
            (
                ["map (% over the images; [95% bootstrap interval over images])", "pixel accuracy", "mIoU", "mAP"],
                rows,
            ),
            (
                [
                    "map minus the centred blob (points; [95% paired bootstrap interval])",
                    "pixel accuracy",
                    "mIoU",
                    "mAP",
                ],
                differences,
            ),
        ],
    )


_METRIC_WORDS = {"pixel_accuracy": "pixel accuracy", "miou": "mIoU", "map": "mAP"}


def blob_verdict(vs_blob: dict[str, tuple[float, float, float]]) -> str:
    """In words, how a map compares with the centred blob, from each metric's paired difference
    ``(difference, low, high)``: a metric counts as better (worse) only if its interval lies above (below) 0."""
    better = [_METRIC_WORDS[k] for k, (_, low, _) in vs_blob.items() if low > 0]
    worse = [_METRIC_WORDS[k] for k, (_, _, high) in vs_blob.items() if high < 0]
    if len(better) == len(vs_blob):
        return "better than a centred blob"
    if len(worse) == len(vs_blob):
        return "worse than a centred blob"
    if not better and not worse:
        return "not distinguishable from a centred blob"
    tied = [word for word in map(_METRIC_WORDS.get, vs_blob) if word not in better + worse]
    parts = [f"{verdict} on {_joined(words)}" for verdict, words in (("better", better), ("worse", worse)) if words]
    parts[0] = parts[0].replace(" on ", " than a centred blob on ", 1)
    return ", ".join(parts + ([f"within noise on {_joined(tied)}"] if tied else []))


def _joined(words: list[str]) -> str:
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + f" and {words[-1]}"


__all__ = ["blob_verdict", "section_textspan", "section_pclens", "section_segmentation"]
