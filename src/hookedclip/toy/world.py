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

This module is the world's public face; each part lives in its own module:
:mod:`~hookedclip.toy.attributes` (the attribute values, :class:`ToyAttributes`, sampling),
:mod:`~hookedclip.toy.render` (anti-aliased images and masks, contact sheets),
:mod:`~hookedclip.toy.text` (captions, zero-shot prompts, the vocabulary) and
:mod:`~hookedclip.toy.dataset` (:class:`ToyWorld`, the seeded dataset, and :class:`SpuriousSpec`).
Everything is seeded: :class:`ToyWorld` item ``i`` is a pure function of ``(seed, split, i)``.
"""

from hookedclip.toy.attributes import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    CENTER_BOX,
    COLOR_RGB,
    COLORS,
    MARGIN,
    POSITIONS,
    SHAPES,
    SIZE_BANDS,
    SIZES,
    TEXTURES,
    WORLD_VERSION,
    ToyAttributes,
    sample_attributes,
)
from hookedclip.toy.dataset import SpuriousSpec, ToyWorld
from hookedclip.toy.render import contact_sheet, render, render_batch
from hookedclip.toy.text import (
    ATTRIBUTE_WORDS,
    CAPTION_ATTRIBUTES,
    DEFAULT_KEEP,
    DISTRACTORS,
    POSITION_PHRASES,
    TEMPLATE_WORDS,
    caption,
    class_prompts,
    vocabulary,
)

__all__ = [
    "ATTRIBUTE_WORDS",
    "BACKGROUNDS",
    "BACKGROUND_RGB",
    "CAPTION_ATTRIBUTES",
    "CENTER_BOX",
    "COLORS",
    "COLOR_RGB",
    "DEFAULT_KEEP",
    "DISTRACTORS",
    "MARGIN",
    "POSITIONS",
    "POSITION_PHRASES",
    "SHAPES",
    "SIZES",
    "SIZE_BANDS",
    "TEMPLATE_WORDS",
    "TEXTURES",
    "WORLD_VERSION",
    "SpuriousSpec",
    "ToyAttributes",
    "ToyWorld",
    "caption",
    "class_prompts",
    "contact_sheet",
    "render",
    "render_batch",
    "sample_attributes",
    "vocabulary",
]
