"""``hookedclip demo``: a report on the shipped toy model, one section per analysis.

Each section is a function ``(ctx) -> Section`` that writes its figures into the report
folder; the sections live in :mod:`hookedclip.report.sections` (``core``: the toy world and the
core analyses; ``methods``: one per method), and a new one is added to :data:`SECTIONS`. This
module runs them and writes the report; it also re-exports :class:`DemoContext` and every
``section_*`` function.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hookedclip.report import viz
from hookedclip.report.sections.attribution import section_sae_attribution
from hookedclip.report.sections.context import DemoContext
from hookedclip.report.sections.core import (
    section_ablation_curve,
    section_head_probes,
    section_layer_shares,
    section_samples,
    section_zero_shot,
)
from hookedclip.report.sections.llava import section_llava
from hookedclip.report.sections.methods import section_pclens, section_segmentation, section_textspan
from hookedclip.report.sections.sae import section_sae
from hookedclip.report.sections.sae_labels import section_sae_labels
from hookedclip.report.sections.sith import section_sith
from hookedclip.report.viz import Section

SECTIONS: list[Callable[[DemoContext], Section]] = [
    section_samples,
    section_zero_shot,
    section_layer_shares,
    section_head_probes,
    section_ablation_curve,
    section_textspan,
    section_pclens,
    section_segmentation,
    section_sae,
    section_sae_labels,
    section_sae_attribution,
    section_sith,
    section_llava,
]


# the linear probes hold out half of the images, stratified: every class of 7 shapes needs a few
MIN_IMAGES = 64


def run_demo(
    out_dir: str | Path,
    model=None,
    n_images: int = 512,
    seed: int = 2024,
    progress: bool = True,
    n_test: int | None = None,
) -> Path:
    """Write the demo report into ``out_dir``; returns the path of ``index.html``.

    ``n_images`` held-out images (``seed``) are analysed (probes, decompositions, PCLens fit);
    every zero-shot and spurious-split accuracy is measured on the canonical test and validation
    sets of :mod:`hookedclip.toy.splits` (``n_test``: only their first ``n_test`` images, for a
    quick run; the default, all of them, gives the numbers of ``hookedclip toy evaluate``)."""
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
        n_test=n_test,
    )
    sections = []
    bar = tqdm(SECTIONS, desc="demo", disable=not progress)
    for fn in bar:
        bar.set_postfix_str(fn.__name__.removeprefix("section_"))  # which step is running
        sections.append(fn(ctx))
    measured = "the canonical test sets" if n_test is None else f"the first {n_test} images of each canonical set"
    meta = (
        f"model: {model_identity(model)}; {n_images} held-out images analysed (seed {seed}); accuracies on {measured}"
    )
    return viz.write_report(out_dir, "hookedclip demo: the toy CLIP", sections, meta)
