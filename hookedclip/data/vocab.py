"""Concept vocabularies: text pools for TextSpan, PCLens labels and SITH's COMP.

A vocabulary is a list of strings. Files hold one concept per line (the SITH convention;
blank lines and lines starting with ``#`` are skipped).
"""

from __future__ import annotations

from pathlib import Path


def load_vocabulary(path: str | Path) -> list[str]:
    """One concept per line; duplicates dropped (first occurrence kept)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"vocabulary file {path} not found (expected one concept per line)")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    concepts = list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    if not concepts:
        raise ValueError(f"vocabulary file {path} has no concepts")
    return concepts


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet class names in the standard order, as shipped by open_clip."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


_POSITION_PHRASES = {"center": "in the center", "left": "on the left", "right": "on the right", "top": "at the top",
                     "bottom": "at the bottom"}


def toy_text_pool() -> list[str]:
    """Short descriptions of every toy-world attribute value, plus distractor concepts that
    are not in the world (for TextSpan / PCLens labels on the toy model)."""
    from hookedclip.toy.world import ATTRIBUTE_WORDS, vocabulary

    words = ATTRIBUTE_WORDS
    pool = [_a(w) for w in words["shape"].values()]
    pool += [_a(f"{w} shape") for w in words["color"].values()]
    pool += [_a(f"{w} background") for w in words["texture"].values()]
    pool += [_a(f"{w} background") for w in words["background"].values()]
    pool += [_a(f"{w} shape") for w in words["size"].values()]
    pool += [f"a shape {_POSITION_PHRASES.get(p, p)}" for p in words["position"]]
    pool += list(vocabulary()["distractors"])  # concepts absent from the world
    return list(dict.fromkeys(pool))
