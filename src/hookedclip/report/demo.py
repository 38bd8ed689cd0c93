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
from hookedclip.report.sections.methods import section_pclens, section_segmentation, section_textspan
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
    section_sae_attribution,
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
