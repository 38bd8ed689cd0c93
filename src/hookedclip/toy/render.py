"""Rendering: a :class:`~hookedclip.toy.attributes.ToyAttributes` into an image and its shape mask.

Rendering is anti-aliased: shape coverage is computed on a 4x4 supersampled grid
and box-averaged, so the edge pixels are a blend of shape and background colour.
The returned mask is the set of output pixels whose coverage is >= 0.5. Pixels
with full coverage are exactly the shape's RGB and pixels with zero coverage are
exactly one of the two background tones (there is no noise).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hookedclip.toy.attributes import BACKGROUND_RGB, COLOR_RGB, SHAPES, TEXTURES, ToyAttributes

if TYPE_CHECKING:
    from hookedclip.toy.dataset import ToyWorld

_SUPERSAMPLE = 4  # anti-aliasing: 4x4 coverage samples per output pixel
_TEMPLATE_RES = 1024  # shape lookup tables are this fine over the unit box [-1, 1]^2
_CHUNK = 256  # images rendered per vectorised step (bounds memory)


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v) of the unit box [-1, 1]^2 (v down) are inside ``shape``."""
    if shape == "circle":
        return u**2 + v**2 <= 1.0
    if shape == "square":
        # Slightly smaller than the box so its area is close to the circle's.
        return np.maximum(np.abs(u), np.abs(v)) <= 0.88
    if shape == "triangle":
        # Apex up, flat base: apex (0, -0.95), base corners (+-1, 0.85).
        t = (v + 0.95) / 1.8  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(u) <= t)
    if shape == "star":
        return _star_inside(u, v, points=5, inner=0.42)
    if shape == "cross":
        # A plus sign; arms a third of the width so it stays a plus at 6 px radius.
        arm = 0.34
        return ((np.abs(u) <= arm) & (np.abs(v) <= 1)) | ((np.abs(v) <= arm) & (np.abs(u) <= 1))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "heart":
        # The classic implicit heart (x^2 + y^2 - 1)^3 <= x^2 y^3 (y up), whose extent
        # is x in [-1.139, 1.139], y in [-1, 1.236]; mapped onto the unit box.
        x = u * 1.139
        y = 0.118 - v * 1.118
        return (x**2 + y**2 - 1) ** 3 <= x**2 * y**3
    raise ValueError(f"unknown shape {shape!r}")


def _star_inside(u: np.ndarray, v: np.ndarray, points: int, inner: float) -> np.ndarray:
    """A regular star with one point straight up, outer radius 1, inner radius ``inner``."""
    rho = np.hypot(u, v)
    theta = np.arctan2(u, -v)  # angle from "up", clockwise
    half = np.pi / points  # angle between an outer and the next inner vertex
    phi = np.abs(np.mod(theta + half, 2 * half) - half)  # angle from the nearest outer vertex
    # Point in the local frame where the outer vertex is (1, 0) and the inner one (qx, qy).
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    qx, qy = inner * np.cos(half), inner * np.sin(half)
    # Inside iff on the origin's side of the edge from (1, 0) to (qx, qy).
    side = (qx - 1) * py - qy * (px - 1)
    return side >= 0


@functools.cache
def _templates() -> np.ndarray:
    """Lookup tables bool [len(SHAPES), R + 2, R + 2] of every shape over [-1, 1]^2.

    Cell (1 + i, 1 + j) is the shape at the centre of cell (i, j) of an R x R grid
    over the unit box; the one-cell False border makes clipped out-of-box lookups
    land outside the shape.
    """
    res = _TEMPLATE_RES
    c = (np.arange(res) + 0.5) / res * 2 - 1
    u, v = c[None, :], c[:, None]
    out = np.zeros((len(SHAPES), res + 2, res + 2), dtype=bool)
    for k, shape in enumerate(SHAPES):
        out[k, 1:-1, 1:-1] = _shape_inside(shape, u, v)
    return out


def _template_index(coords: np.ndarray, centre: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Padded-template index int [m, P] of sample coordinates [P] for shapes centre/radius [m]."""
    unit = (coords[None, :] - centre[:, None]) / radius[:, None]  # in [-1, 1] inside the box
    idx = np.floor((unit + 1) * (0.5 * _TEMPLATE_RES)).astype(np.int64) + 1
    return np.clip(idx, 0, _TEMPLATE_RES + 1)


def _coverage(attrs: Sequence[ToyAttributes], image_size: int) -> np.ndarray:
    """Supersampled shape coverage uint8 [m, H, W], counts in 0 .. _SUPERSAMPLE**2."""
    ss, m = _SUPERSAMPLE, len(attrs)
    samples = (np.arange(image_size * ss) + 0.5) / (image_size * ss)  # sample centres, [P]
    cx = np.array([a.cx for a in attrs])
    cy = np.array([a.cy for a in attrs])
    radius = np.array([a.radius for a in attrs])
    shape = np.array([SHAPES.index(a.shape) for a in attrs])
    ix = _template_index(samples, cx, radius)  # [m, P]
    iy = _template_index(samples, cy, radius)  # [m, P]
    side = _TEMPLATE_RES + 2
    rows = shape[:, None] * side * side + iy * side  # flat offset of each sample row, [m, P]
    inside = _templates().ravel()[rows[:, :, None] + ix[:, None, :]]  # [m, P, P]
    # Box-sum each pixel's ss x ss samples: first the ss sample rows, then the ss
    # sample columns. Adding strided slices is ~20x faster than .sum(axis=(2, 4)).
    per_row = inside.view(np.uint8).reshape(m, image_size, ss, image_size * ss)
    per_row = functools.reduce(np.add, (per_row[:, :, k] for k in range(ss)))  # [m, H, P]
    per_col = per_row.reshape(m, image_size, image_size, ss)
    return functools.reduce(np.add, (per_col[..., k] for k in range(ss)))  # [m, H, W]


@functools.cache
def _texture_patterns(image_size: int) -> np.ndarray:
    """bool [len(TEXTURES), H, W]: where each texture uses the second background tone.

    Patterns are pixel aligned (exactly two tones, no blending) and scale with the
    image: at 32 px, 3 px diagonal stripes, 2x2 dots every 5 px, 2 px checker.
    With patch size 4 every patch sees part of each pattern.
    """
    unit = max(1, round(image_size / 32))
    y, x = np.mgrid[:image_size, :image_size]
    out = np.zeros((len(TEXTURES), image_size, image_size), dtype=bool)
    for k, texture in enumerate(TEXTURES):
        if texture == "plain":
            continue
        if texture == "stripes":
            out[k] = (x + y) % (6 * unit) < 3 * unit
        elif texture == "dots":
            out[k] = ((x - unit) % (5 * unit) < 2 * unit) & ((y - unit) % (5 * unit) < 2 * unit)
        elif texture == "checker":
            out[k] = ((x // (2 * unit)) + (y // (2 * unit))) % 2 == 1
        else:
            raise ValueError(f"no pattern for texture {texture!r}")
    return out


def _backgrounds(attrs: Sequence[ToyAttributes], image_size: int) -> np.ndarray:
    """Background images uint8 [m, H, W, 3]."""
    pattern = _texture_patterns(image_size)[[TEXTURES.index(a.texture) for a in attrs]]
    tones = np.array([BACKGROUND_RGB[a.background] for a in attrs], dtype=np.uint8)  # [m, 2, 3]
    return np.where(pattern[..., None], tones[:, None, None, 1], tones[:, None, None, 0])


def render_batch(attrs: Sequence[ToyAttributes], image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Render many images: (uint8 [N, H, W, 3], bool masks [N, H, W]).

    Identical, image by image, to calling :func:`render` on each (all arithmetic is
    elementwise or integer).
    """
    n, full = len(attrs), _SUPERSAMPLE**2
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=bool)
    for start in range(0, n, _CHUNK):
        chunk = attrs[start : start + _CHUNK]
        cover = _coverage(chunk, image_size).astype(np.uint16)[..., None]  # [m, H, W, 1]
        background = _backgrounds(chunk, image_size).astype(np.uint16)
        color = np.array([COLOR_RGB[a.color] for a in chunk], dtype=np.uint16)[:, None, None, :]
        # Integer alpha blend with rounding: exact colours at coverage 0 and full.
        blend = (background * (full - cover) + color * cover + full // 2) // full
        images[start : start + len(chunk)] = blend.astype(np.uint8)
        masks[start : start + len(chunk)] = cover[..., 0] * 2 >= full
    return images, masks


def render(attrs: ToyAttributes, image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Render one image: (uint8 [H, W, 3], bool mask [H, W] of pixels >= 50% covered)."""
    images, masks = render_batch([attrs], image_size)
    return images[0], masks[0]


def contact_sheet(world: ToyWorld, n: int = 32, path: str | None = None, cols: int = 8, scale: int = 4) -> np.ndarray:
    """Grid uint8 [rows * (S * scale + 2), cols * (S * scale + 2), 3] of the first ``n``
    images, nearest-neighbour upscaled with a 2 px white gutter; written as PNG to ``path``
    if given."""
    images = world.images(range(min(n, len(world))))
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    rows = -(-len(images) // cols)
    tile = images.shape[1] + 2
    sheet = np.full((rows * tile, cols * tile, 3), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        sheet[r * tile + 1 : r * tile + tile - 1, c * tile + 1 : c * tile + tile - 1] = image
    if path is not None:
        from PIL import Image

        Image.fromarray(sheet).save(path, format="PNG")  # 8-bit RGB
    return sheet
