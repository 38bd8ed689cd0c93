"""The demo report's SITH section: every head's singular vectors explained by concepts, read
from the weights alone, and the suppression of the texture vectors on the spurious split."""

from __future__ import annotations

from hookedclip.report.sections.context import DemoContext
from hookedclip.report.viz import Section


def _image_mean_images(model):
    """The 512 images docs/sith.md takes the image mean from, so the demo picks the same vectors
    and shows the same numbers as the docs."""
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.world import ToyWorld

    world = ToyWorld(512, seed=11, split="test", image_size=model.cfg.vision.image_size)
    return images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)


def section_sith(ctx: DemoContext) -> Section:
    from hookedclip.data.spurious import toy_task
    from hookedclip.methods import sith

    model = ctx.model
    L = model.cfg.vision.layers
    dictionary = sith.dictionary(model, "toy")
    mean = sith.image_mean(model, _image_mean_images(model).split(256))
    layers = list(range(max(0, L - 3), L))
    results = [sith.decompose(model, layer, dictionary, k=3, image_mean=mean, sides=["right"]) for layer in layers]
    last = results[-1]
    background = [h for h in range(last.n_heads) if "background" in last.top_concepts(h, 0)[0]]
    head = background[0] if background else 0
    last.plot(ctx.out_dir / "sith_head.png", head=head, n=8)
    rows = [
        [label, f"v{i}", f"{float(last.S[h, i]):.2f}", "; ".join(f"{c} ({w:.2f})" for c, w in last.explanation(h, i))]
        for h, label in enumerate(last.labels)
        for i in range(2)
    ]
    task = toy_task(model, n=ctx.canonical_n("spurious"))  # the canonical test set, as every section
    vectors = sith.vectors_by_concept(results, task.concepts)
    found = sith.suppress(model, vectors, task)
    found.plot(ctx.out_dir / "sith_suppression.png")
    _, before, (lo_b, hi_b) = found.worst_group("before")
    _, after, (lo_a, hi_a) = found.worst_group("after")
    return Section(
        "SITH: what each head writes, read from its weights",
        [
            "SITH (hookedclip.methods.sith) needs no images: each head's value-output circuit W_V W_O is split by "
            "an SVD into singular vectors; each write direction is read out into the joint space and explained by "
            f"3 concepts of the toy pool ({len(dictionary)} texts), chosen by coherent orthogonal matching pursuit "
            f"(COMP, λ = 0.3). The mean fidelity (cosine of the concepts' reconstruction with the direction) in the "
            f"last layer is {float(last.fidelity.mean()):.2f}.",
            f"Removing every vector of layers {layers[0]}-{layers[-1]} whose top concept is one of the spurious "
            f'split\'s textures ("{task.concepts[0]}", "{task.concepts[1]}"; {len(vectors)} of '
            f"{sum(r.n_heads * r.rank for r in results)} vectors) changes the worst group on {len(task.labels)} "
            f"group-balanced images from {100 * before:.1f}% [{100 * lo_b:.1f}, {100 * hi_b:.1f}] to "
            f"{100 * after:.1f}% [{100 * lo_a:.1f}, {100 * hi_a:.1f}] (95% intervals), and the average from "
            f"{100 * found.average('before'):.1f}% to {100 * found.average('after'):.1f}%.",
        ],
        figures=[
            ("sith_head.png", f"{last.labels[head]}: singular values of its first 8 vectors, each with its concepts."),
            ("sith_suppression.png", "Accuracy of each group before and after the texture vectors are removed."),
        ],
        tables=[(["head", "vector", "σ", "concepts (coefficient)"], rows)],
    )


__all__ = ["section_sith"]
