"""A procedural "toy world" of coloured shapes on textured backgrounds.

This is the ground truth that the toy CLIP models are trained on, and on which
interpretability methods must recover planted structure. Every image shows one
foreground shape with five categorical attributes

    shape       circle, square, triangle, star, cross, diamond, heart
    color       red, green, blue, yellow, purple, orange   (saturated)
    texture     plain, stripes, dots, checker              (background pattern)
    background  gray, white, black, brown                  (muted two-tone background)
    size        small, large

plus a continuous position (a coarse name, e.g. "left", is derived for captions).

Geometry is resolution independent: ``cx``, ``cy`` and ``radius`` are fractions
of the image side (x to the right, y *down*, (0, 0) the top-left corner of the
image), so the same :class:`ToyAttributes` can be rendered at any ``image_size``.
``radius`` is the half-width of the shape's bounding box: the shape lies inside
``[cx - radius, cx + radius] x [cy - radius, cy + radius]``, which is always
inside the image.

Rendering is anti-aliased: shape coverage is computed on a 4x4 supersampled grid
and box-averaged, so the edge pixels are a blend of shape and background colour.
The returned mask is the set of output pixels whose coverage is >= 0.5. Pixels
with full coverage are exactly the shape's RGB and pixels with zero coverage are
exactly one of the two background tones (there is no noise).

Everything is seeded: :class:`ToyWorld` item ``i`` is a pure function of
``(seed, split, i)``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Iterable, Sequence

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

# Words used in captions and prompts for every attribute value.
ATTRIBUTE_WORDS: dict[str, dict[str, str]] = {
    "shape": {s: s for s in SHAPES},
    "color": {c: c for c in COLORS},
    "texture": {"plain": "plain", "stripes": "striped", "dots": "dotted", "checker": "checkered"},
    "background": {b: b for b in BACKGROUNDS},
    "size": {s: s for s in SIZES},
    "position": {p: p for p in POSITIONS},
}
# How a position is said: "a red circle on the left".
_POSITION_PHRASES = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
CAPTION_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "texture", "background", "size", "position")
DEFAULT_KEEP: dict[str, float] = {
    "shape": 1.0,
    "color": 0.7,
    "texture": 0.7,
    "size": 0.3,
    "position": 0.2,
    "background": 0.3,
}
# Words that are not in the world, for "does the model respond to nonsense" controls.
DISTRACTORS: tuple[str, ...] = (
    "dog", "cat", "car", "tree", "music", "house", "bird", "boat", "flower", "chair",
    "table", "phone", "book", "apple", "river", "mountain", "cloud", "train", "horse", "guitar",
    "city", "door", "window", "bicycle", "computer", "ocean", "forest", "bread", "clock", "shoe",
    "pencil", "lamp", "bottle", "bridge", "rocket", "fish", "winter", "happy", "running", "person",
)  # fmt: skip
# Filler words of the caption/prompt templates (none is an attribute word).
TEMPLATE_WORDS: tuple[str, ...] = (
    "a", "an", "photo", "image", "picture", "of", "shape", "background", "on", "with", "the", "at", "in",
)  # fmt: skip

_SUPERSAMPLE = 4  # anti-aliasing: 4x4 coverage samples per output pixel
_TEMPLATE_RES = 1024  # shape lookup tables are this fine over the unit box [-1, 1]^2
_CHUNK = 256  # images rendered per vectorised step (bounds memory)


# --------------------------------------------------------------------------- attributes


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
            ("shape", SHAPES), ("color", COLORS), ("texture", TEXTURES),
            ("background", BACKGROUNDS), ("size", SIZES),
        ):  # fmt: skip
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
            shape=shapes[shape[k]], color=colors[color[k]], texture=textures[texture[k]],
            background=backgrounds[background[k]], size=sizes[size[k]],
            cx=float(cx[k]), cy=float(cy[k]), radius=float(radius[k]),
        )  # fmt: skip
        for k in range(n)
    ]


# --------------------------------------------------------------------------- shapes


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


@functools.lru_cache(maxsize=None)
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


# --------------------------------------------------------------------------- backgrounds


@functools.lru_cache(maxsize=None)
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


# --------------------------------------------------------------------------- rendering


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


# --------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(
    attrs: ToyAttributes, rng: np.random.Generator, keep: dict[str, float] | None = None
) -> tuple[str, frozenset[str]]:
    """A random caption of ``attrs`` and the set of attribute names it mentions.

    Each attribute in CAPTION_ATTRIBUTES is mentioned with probability ``keep[name]``
    (missing names fall back to DEFAULT_KEEP); if none is kept, the shape is. A
    mentioned attribute appears as its ATTRIBUTE_WORDS word; no other attribute
    word appears. Examples: "a photo of a red triangle on a striped background",
    "a small blue circle", "a red shape at the top", "an image of a dotted gray background".
    Captions end with "." half of the time.
    """
    probs = {**DEFAULT_KEEP, **(keep or {})}
    kept = [name for name in CAPTION_ATTRIBUTES if rng.random() < probs[name]]
    mentioned = frozenset(kept or ["shape"])
    words = {name: ATTRIBUTE_WORDS[name][getattr(attrs, name)] for name in mentioned}

    has_object = bool(mentioned & {"shape", "color", "size", "position"})
    parts = []
    if has_object:
        noun = [words[k] for k in ("size", "color") if k in words] + [words.get("shape", "shape")]
        parts.append(f"{_article(noun[0])} {' '.join(noun)}")
    if "texture" in words or "background" in words:
        ground = " ".join(words[k] for k in ("texture", "background") if k in words)
        ground = f"{_article(ground)} {ground} background"
        parts.append(f"{('on', 'with')[rng.integers(2)]} {ground}" if has_object else ground)
    if "position" in words:
        # The position phrase goes before or after the background phrase.
        parts.insert(1 + int(rng.integers(len(parts))), _POSITION_PHRASES[attrs.position])

    prefix = ("", "a photo of ", "an image of ", "a picture of ")[rng.integers(4)]
    end = "." if rng.random() < 0.5 else ""
    return prefix + " ".join(parts) + end, mentioned


def class_prompts(attribute: str) -> dict[str, list[str]]:
    """Zero-shot prompts for each value of ``attribute``: value -> list of filled templates.

    Each prompt mentions only that attribute's word, e.g. shape "triangle" ->
    ["a photo of a triangle.", "a triangle.", "a picture of a triangle shape."].
    """
    if attribute == "shape":
        templates = ["a photo of {a} {w}.", "{a} {w}.", "a picture of {a} {w} shape."]
    elif attribute in ("color", "size"):
        templates = ["a photo of {a} {w} shape.", "{a} {w} shape.", "a picture of {a} {w} shape."]
    elif attribute in ("texture", "background"):
        templates = ["{a} {w} background.", "a photo of a shape on {a} {w} background.",
                     "a picture with {a} {w} background."]  # fmt: skip
    elif attribute == "position":
        templates = ["a shape {p}.", "a photo of a shape {p}.", "a picture of a shape {p}."]
    else:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {CAPTION_ATTRIBUTES}")
    prompts = {}
    for value, word in ATTRIBUTE_WORDS[attribute].items():
        fill = {"w": word, "a": _article(word), "p": _POSITION_PHRASES.get(value, "")}
        prompts[value] = [t.format(**fill) for t in templates]
    return prompts


def vocabulary() -> dict[str, list[str]]:
    """Words of the world: one list per attribute, plus "template" (filler words of
    captions and prompts), "distractors" (words not in the world) and "all" (every
    word above, deduplicated, in this fixed order)."""
    vocab = {name: list(ATTRIBUTE_WORDS[name].values()) for name in CAPTION_ATTRIBUTES}
    vocab["template"] = list(TEMPLATE_WORDS)
    vocab["distractors"] = list(DISTRACTORS)
    vocab["all"] = list(dict.fromkeys(w for words in vocab.values() for w in words))
    return vocab


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class SpuriousSpec:
    """A Waterbirds-style split: two shape classes, each with its "own" texture.

    Groups: ``group = 2 * class_index + texture_index``, i.e. with the defaults
    0 = circle on stripes, 1 = circle on dots, 2 = square on stripes,
    3 = square on dots. Groups 0 and 3 are "aligned" (class on its own texture).
    """

    classes: tuple[str, str] = ("circle", "square")
    textures: tuple[str, str] = ("stripes", "dots")
    p_aligned: float = 0.95  # train split: P(image shows its class's own texture)

    def __post_init__(self) -> None:
        if len(set(self.classes)) != 2 or not set(self.classes) <= set(SHAPES):
            raise ValueError(f"classes must be two distinct SHAPES, got {self.classes}")
        if len(set(self.textures)) != 2 or not set(self.textures) <= set(TEXTURES):
            raise ValueError(f"textures must be two distinct TEXTURES, got {self.textures}")
        if not 0.0 <= self.p_aligned <= 1.0:
            raise ValueError(f"p_aligned must be in [0, 1], got {self.p_aligned}")

    def group_names(self) -> list[str]:
        """Names of groups 0..3, e.g. ["circle on stripes", "circle on dots", ...]."""
        return [f"{c} on {t}" for c in self.classes for t in self.textures]


_SPLITS = {"train": 0, "val": 1, "test": 2}


class ToyWorld:
    """A finite, indexable, seeded dataset of toy images with captions.

    Item ``i`` is a pure function of ``(seed, split, i)``: it is drawn from its own
    generator ``np.random.default_rng([seed, split_code, i])``, so items can be
    made independently, in any order, by any worker. Splits use different streams.

    With ``spurious``, only the two class shapes appear. Each image's class is
    uniform; in the "train" split its texture is the class's own with probability
    ``p_aligned`` (else the other class's), in other splits it is uniform over the
    two. With ``group_balanced`` item ``i`` is in group ``i % 4`` (see
    :class:`SpuriousSpec` for the numbering), so groups are exactly balanced.

    With ``spurious_in_train`` (and no ``spurious``), the full world is drawn as usual
    but, in the "train" split only, images of the spec's two class shapes have their
    texture re-drawn: the class's own texture with probability ``p_aligned``, else
    the other class's. Other shapes keep uniform textures; other splits are unchanged.
    This is how the toy CLIP's training distribution plants the spurious correlation.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        image_size: int = 32,
        caption_keep: dict[str, float] | None = None,
        split: str = "train",
        spurious: SpuriousSpec | None = None,
        group_balanced: bool = False,
        spurious_in_train: SpuriousSpec | None = None,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
        if group_balanced and spurious is None:
            raise ValueError("group_balanced needs a spurious spec")
        self.n, self.seed, self.image_size = int(n), int(seed), int(image_size)
        self.caption_keep, self.split = caption_keep, split
        self.spurious, self.group_balanced = spurious, group_balanced
        if spurious is not None and spurious_in_train is not None:
            raise ValueError("give spurious (a two-shape split) or spurious_in_train, not both")
        self.spurious_in_train = spurious_in_train

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        i = int(i)
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for ToyWorld of length {self.n}")
        return i % self.n

    def _draw(self, i: int) -> tuple[ToyAttributes, int, np.random.Generator]:
        """Attributes and group of item ``i``, and its generator (for the caption)."""
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], i])
        spec = self.spurious
        if spec is None:
            attrs = sample_attributes(rng, 1)[0]
            if self.spurious_in_train is not None and self.split == "train":
                attrs = self.plant_texture(attrs, i)
            return attrs, -1, rng
        if self.group_balanced:
            cls, tex = divmod(i % 4, 2)
        else:
            cls = int(rng.integers(2))
            p_own = spec.p_aligned if self.split == "train" else 0.5
            tex = cls if rng.random() < p_own else 1 - cls
        attrs = sample_attributes(rng, 1, shapes=(spec.classes[cls],), textures=(spec.textures[tex],))[0]
        return attrs, 2 * cls + tex, rng

    def plant_texture(self, attrs: ToyAttributes, i: int) -> ToyAttributes:
        """``attrs`` with its texture re-drawn as ``spurious_in_train`` says for item ``i``
        (unchanged unless its shape is one of the spec's classes)."""
        planted = self.spurious_in_train
        if planted is None or attrs.shape not in planted.classes:
            return attrs
        # Its own generator, so the caption stream of item i is that of the plain world.
        extra = np.random.default_rng([self.seed, _SPLITS[self.split], int(i), 1])
        cls = planted.classes.index(attrs.shape)
        tex = cls if extra.random() < planted.p_aligned else 1 - cls
        return dataclasses.replace(attrs, texture=planted.textures[tex])

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        attrs, group, rng = self._draw(i)
        image, mask = render(attrs, self.image_size)
        text, mentioned = caption(attrs, rng, self.caption_keep)
        return {
            "image": image, "mask": mask, "caption": text, "mentioned": mentioned,
            "attributes": attrs, "labels": attrs.labels(), "group": group, "index": i,
        }  # fmt: skip

    def _indices(self, indices: Iterable[int] | None) -> list[int]:
        return list(range(self.n)) if indices is None else [self._index(i) for i in indices]

    def attributes(self, indices: Iterable[int] | None = None) -> list[ToyAttributes]:
        """Attributes of the given items (default: all), in order."""
        return [self._draw(i)[0] for i in self._indices(indices)]

    def groups(self, indices: Iterable[int] | None = None) -> np.ndarray:
        """Group int [N] of the given items (-1 without a spurious spec)."""
        return np.array([self._draw(i)[1] for i in self._indices(indices)], dtype=np.int64)

    def captions(self, indices: Iterable[int] | None = None) -> list[str]:
        """Captions of the given items (default: all), equal to their "caption" entries."""
        out = []
        for i in self._indices(indices):
            attrs, _, rng = self._draw(i)
            out.append(caption(attrs, rng, self.caption_keep)[0])
        return out

    def images(self, indices: Iterable[int] | None = None) -> np.ndarray:
        """Batch render: uint8 [N, H, W, 3], equal to the items' "image" entries."""
        return render_batch(self.attributes(indices), self.image_size)[0]


# --------------------------------------------------------------------------- contact sheet


def contact_sheet(
    world: ToyWorld, n: int = 32, path: str | None = None, cols: int = 8, scale: int = 4
) -> np.ndarray:
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
