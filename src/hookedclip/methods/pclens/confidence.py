"""How far to trust a PC's text label: its cosine with the PC, and whether its words belong to the
images' world.

A PC's label is the text of the pool most aligned with it, but the best of a pool can still be a
poor fit (a low cosine), or a word the images never show (a distractor such as "computer" on the
toy world: the PC is then about something the pool cannot name). Reports mark such labels
(:data:`LOW_CONFIDENCE_MARK`) instead of letting them read as the PC's meaning.
"""

from __future__ import annotations

import re
from collections.abc import Collection

#: Labels whose |cosine| with the PC is below this are marked as weak.
LOW_COSINE = 0.2
#: Appended to a low-confidence label.
LOW_CONFIDENCE_MARK = "⚠"

_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    """The lower-case words of ``text``."""
    return _WORD.findall(text.lower())


def low_confidence(
    text: str, cosine: float, threshold: float = LOW_COSINE, known_words: Collection[str] | None = None
) -> bool:
    """Whether a label should be marked: ``|cosine| < threshold``, or (with ``known_words``, the
    vocabulary of the images' world) a word of ``text`` outside it."""
    if abs(cosine) < threshold:
        return True
    return known_words is not None and any(word not in known_words for word in words_of(text))


def label_text(
    text: str, cosine: float, threshold: float = LOW_COSINE, known_words: Collection[str] | None = None
) -> str:
    """``"a striped background (+0.41)"``, with :data:`LOW_CONFIDENCE_MARK` appended when
    :func:`low_confidence`."""
    mark = f" {LOW_CONFIDENCE_MARK}" if low_confidence(text, cosine, threshold, known_words) else ""
    return f"{text} ({cosine:+.2f}){mark}"


def confidence_note(threshold: float = LOW_COSINE, known_words: Collection[str] | None = None) -> str:
    """The sentence a report prints to explain the mark."""
    outside = " or has a word outside the world's vocabulary (a distractor)" if known_words is not None else ""
    return (
        f"{LOW_CONFIDENCE_MARK} marks a weak label: its |cosine| with the PC is below {threshold:g}{outside}; "
        "read it as 'the pool has no good name for this PC', not as the PC's meaning. Every text of a side "
        "is listed with its cosine: the first is not necessarily the PC's meaning."
    )


def toy_known_words() -> set[str]:
    """The toy world's own words (attribute values and caption/prompt filler; no distractor)."""
    from hookedclip.toy.text import vocabulary

    vocab = vocabulary()
    return {
        w for name, items in vocab.items() if name not in ("distractors", "all") for t in items for w in words_of(t)
    }


__all__ = [
    "LOW_COSINE",
    "LOW_CONFIDENCE_MARK",
    "words_of",
    "low_confidence",
    "label_text",
    "confidence_note",
    "toy_known_words",
]
