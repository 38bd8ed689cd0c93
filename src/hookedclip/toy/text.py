"""The world's words: captions of an image, zero-shot prompts per attribute, and the vocabulary."""

from __future__ import annotations

import numpy as np

from hookedclip.toy.attributes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, ToyAttributes

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
POSITION_PHRASES = {
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
    "dog",
    "cat",
    "car",
    "tree",
    "music",
    "house",
    "bird",
    "boat",
    "flower",
    "chair",
    "table",
    "phone",
    "book",
    "apple",
    "river",
    "mountain",
    "cloud",
    "train",
    "horse",
    "guitar",
    "city",
    "door",
    "window",
    "bicycle",
    "computer",
    "ocean",
    "forest",
    "bread",
    "clock",
    "shoe",
    "pencil",
    "lamp",
    "bottle",
    "bridge",
    "rocket",
    "fish",
    "winter",
    "happy",
    "running",
    "person",
)
# Filler words of the caption/prompt templates (none is an attribute word).
TEMPLATE_WORDS: tuple[str, ...] = (
    "a",
    "an",
    "photo",
    "image",
    "picture",
    "of",
    "shape",
    "background",
    "on",
    "with",
    "the",
    "at",
    "in",
)


def article(word: str) -> str:
    """``"a"`` or ``"an"``, whichever goes before ``word``."""
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
        parts.append(f"{article(noun[0])} {' '.join(noun)}")
    if "texture" in words or "background" in words:
        ground = " ".join(words[k] for k in ("texture", "background") if k in words)
        ground = f"{article(ground)} {ground} background"
        parts.append(f"{('on', 'with')[rng.integers(2)]} {ground}" if has_object else ground)
    if "position" in words:
        # The position phrase goes before or after the background phrase.
        parts.insert(1 + int(rng.integers(len(parts))), POSITION_PHRASES[attrs.position])

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
        templates = [
            "{a} {w} background.",
            "a photo of a shape on {a} {w} background.",
            "a picture with {a} {w} background.",
        ]
    elif attribute == "position":
        templates = ["a shape {p}.", "a photo of a shape {p}.", "a picture of a shape {p}."]
    else:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {CAPTION_ATTRIBUTES}")
    prompts = {}
    for value, word in ATTRIBUTE_WORDS[attribute].items():
        fill = {"w": word, "a": article(word), "p": POSITION_PHRASES.get(value, "")}
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
