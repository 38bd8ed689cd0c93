"""The toy world's attributes: the values each can take, :class:`ToyAttributes`, and how they are drawn.

Geometry is resolution independent: ``cx``, ``cy`` and ``radius`` are fractions
of the image side (x to the right, y *down*, (0, 0) the top-left corner of the
image), so the same :class:`ToyAttributes` can be rendered at any ``image_size``.
``radius`` is the half-width of the shape's bounding box: the shape lies inside
``[cx - radius, cx + radius] x [cy - radius, cy + radius]``, which is always
inside the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WORLD_VERSION = "1"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "heart")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
TEXTURES: tuple[str, ...] = ("plain", "stripes", "dots", "checker")
BACKGROUNDS: tuple[str, ...] = ("gray", "white", "black", "brown")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("center", "left", "right", "top", "bottom")

# Saturated shape colours, far (in RGB) from every background tone below.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 80, 230),
    "yellow": (245, 215, 0),
    "purple": (150, 40, 210),
    "orange": (255, 135, 0),
}

# Each background is two close, low-saturation tones: the texture is drawn in
# tone 1 on tone 0, so it is visible but never mistaken for a shape colour.
BACKGROUND_RGB: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "gray": ((128, 128, 128), (96, 96, 96)),
    "white": ((235, 235, 235), (198, 198, 198)),
    "black": ((25, 25, 25), (66, 66, 66)),
    "brown": ((120, 96, 74), (80, 62, 46)),
}

# Radius bands (fraction of image side): about 6-8 px and 10-13 px at 32 px.
SIZE_BANDS: dict[str, tuple[float, float]] = {"small": (0.19, 0.25), "large": (0.31, 0.40)}
MARGIN = 1 / 32  # keep the bounding box this far (fraction of side) inside the image
CENTER_BOX = 0.125  # |offset from image centre| below this (both axes) -> "center"


@dataclass(frozen=True)
class ToyAttributes:
    """Everything that determines one rendered image.

    ``cx``, ``cy``: shape centre, ``radius``: half-width of its bounding box, all as
    fractions of the image side (y points down).
    """

    shape: str
    color: str
    texture: str
    background: str
    size: str
    cx: float
    cy: float
    radius: float

    def __post_init__(self) -> None:
        for name, allowed in (
            ("shape", SHAPES),
            ("color", COLORS),
            ("texture", TEXTURES),
            ("background", BACKGROUNDS),
            ("size", SIZES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} not in {allowed}")

    @property
    def position(self) -> str:
        """Coarse position name (one of POSITIONS) of the shape centre."""
        dx, dy = self.cx - 0.5, self.cy - 0.5
        if max(abs(dx), abs(dy)) < CENTER_BOX:
            return "center"
        if abs(dx) >= abs(dy):
            return "left" if dx < 0 else "right"
        return "top" if dy < 0 else "bottom"

    def labels(self) -> dict[str, int]:
        """Integer class index of each categorical attribute (into SHAPES, COLORS, ...)."""
        return {
            "shape": SHAPES.index(self.shape),
            "color": COLORS.index(self.color),
            "texture": TEXTURES.index(self.texture),
            "background": BACKGROUNDS.index(self.background),
            "size": SIZES.index(self.size),
            "position": POSITIONS.index(self.position),
        }


def sample_attributes(
    rng: np.random.Generator,
    n: int,
    *,
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = COLORS,
    textures: Sequence[str] = TEXTURES,
    backgrounds: Sequence[str] = BACKGROUNDS,
    sizes: Sequence[str] = SIZES,
) -> list[ToyAttributes]:
    """Draw ``n`` independent attribute sets, each categorical uniform over the given values.

    The radius is uniform within the size's band and the centre uniform over the
    positions that keep the whole bounding box ``MARGIN`` inside the image.
    """
    shape = rng.integers(len(shapes), size=n)
    color = rng.integers(len(colors), size=n)
    texture = rng.integers(len(textures), size=n)
    background = rng.integers(len(backgrounds), size=n)
    size = rng.integers(len(sizes), size=n)
    band = np.array([SIZE_BANDS[s] for s in sizes])[size]  # [n, 2]
    radius = band[:, 0] + rng.random(n) * (band[:, 1] - band[:, 0])
    lo, hi = radius + MARGIN, 1.0 - radius - MARGIN
    cx = lo + rng.random(n) * (hi - lo)
    cy = lo + rng.random(n) * (hi - lo)
    return [
        ToyAttributes(
            shape=shapes[shape[k]],
            color=colors[color[k]],
            texture=textures[texture[k]],
            background=backgrounds[background[k]],
            size=sizes[size[k]],
            cx=float(cx[k]),
            cy=float(cy[k]),
            radius=float(radius[k]),
        )
        for k in range(n)
    ]
