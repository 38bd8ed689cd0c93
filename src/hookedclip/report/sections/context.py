"""What every section of the demo report shares: :class:`DemoContext` and progress bars."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


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
    n_test: int | None = None  # images of each canonical test / validation set (None: all; fewer: the first n)
    cache: dict = field(default_factory=dict)  # results shared between sections

    def canonical_n(self, split: str, validation: bool = False) -> int | None:
        """How many images of a canonical set (:mod:`hookedclip.toy.splits`) the demo measures."""
        from hookedclip.toy.splits import TEST_SIZES, VALIDATION_SIZES

        sizes = VALIDATION_SIZES if validation else TEST_SIZES
        return None if self.n_test is None else min(self.n_test, sizes[split])

    def labels(self, attribute: str) -> np.ndarray:
        return np.array([a.labels()[attribute] for a in self.attributes])


def progress_steps(ctx: DemoContext, items, desc: str):
    """``items`` with a transient progress bar when the demo shows progress."""
    return tqdm(items, desc=desc, disable=not ctx.progress, leave=False)


__all__ = ["DemoContext", "progress_steps"]
