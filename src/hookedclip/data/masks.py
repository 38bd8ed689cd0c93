"""Ground-truth segmentation masks in the geometry of a preprocessed CLIP image."""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool
from torch import Tensor

MaskGeometry = Literal["reference", "aligned"]


def resize_mask(
    mask: Bool[Tensor, "height width"], size: int = 224, geometry: MaskGeometry = "reference"
) -> Bool[Tensor, "size size"]:
    """A ground-truth mask in the geometry of a CLIP eval image of side ``size``.

    ``"reference"``: resized straight to ``size × size`` (nearest), as the reference
    segmentation code does while the image gets a short-side resize and a centre crop, so the
    two disagree on non-square images (kept for parity with its numbers). ``"aligned"``: the
    image's own short-side resize and centre crop, nearest interpolation.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    m = torch.as_tensor(mask).to(torch.uint8)[None]
    nearest = InterpolationMode.NEAREST
    if geometry == "reference":
        return TF.resize(m, [size, size], interpolation=nearest)[0].bool()
    if geometry != "aligned":
        raise ValueError(f"geometry must be 'reference' or 'aligned', got {geometry!r}")
    return TF.center_crop(TF.resize(m, size, interpolation=nearest), [size, size])[0].bool()
