"""The canonical held-out sets of the toy world: one test set and one validation set per toy split.

Every accuracy the package reports on the toy world (``hookedclip toy evaluate``, the demo,
``hookedclip pclens debias``, the examples and the docs) is measured on these sets, so the
same quantity reads the same everywhere:

==========  ==================================================  ==========  ================
split       images                                              test        validation
==========  ==================================================  ==========  ================
"world"     the full world (every shape, texture, colour, ...)  2000        1000
"spurious"  circles and squares, balanced over the 4 groups     2000        1000
==========  ==================================================  ==========  ================

Test sets are ``ToyWorld(split="test", seed=12345)``, validation sets ``ToyWorld(split="val",
seed=12345)``: a different random stream, so the two never share an image, and neither shares
one with training (``split="train"``). Choices (a number of PCs to remove, a threshold) are made
on the validation set and reported on the test set.

A smaller ``n`` gives the first ``n`` images of the same set (item ``i`` depends only on
``(seed, split, i)``), for quick checks and tests; it is never another sample.
"""

from __future__ import annotations

from hookedclip.toy.dataset import SpuriousSpec, ToyWorld

#: The seed of every canonical set (the split name, "test" or "val", picks the stream).
CANONICAL_SEED = 12345
TOY_SPLITS: tuple[str, ...] = ("world", "spurious")
TEST_SIZES: dict[str, int] = {"world": 2000, "spurious": 2000}
VALIDATION_SIZES: dict[str, int] = {"world": 1000, "spurious": 1000}


def _canonical(split: str, stream: str, n: int | None, sizes: dict[str, int], image_size: int) -> ToyWorld:
    if split not in TOY_SPLITS:
        raise ValueError(f"unknown toy split {split!r}; use one of {TOY_SPLITS}")
    size = sizes[split]
    n = size if n is None else int(n)
    if not 1 <= n <= size:
        raise ValueError(
            f"n={n}: the canonical {split!r} {stream} set has {size} images; give 1..{size} "
            "(a smaller n is its first n images)"
        )
    spec = SpuriousSpec() if split == "spurious" else None
    return ToyWorld(
        n,
        seed=CANONICAL_SEED,
        image_size=image_size,
        split=stream,
        spurious=spec,
        group_balanced=spec is not None,
    )


def test_set(split: str = "world", n: int | None = None, image_size: int = 32) -> ToyWorld:
    """The canonical test set of a toy split (``"world"`` or ``"spurious"``): ``TEST_SIZES[split]``
    images of ``ToyWorld(split="test", seed=CANONICAL_SEED)``, or their first ``n``."""
    return _canonical(split, "test", n, TEST_SIZES, image_size)


def validation_set(split: str = "world", n: int | None = None, image_size: int = 32) -> ToyWorld:
    """The canonical validation set of a toy split: ``VALIDATION_SIZES[split]`` images of
    ``ToyWorld(split="val", seed=CANONICAL_SEED)`` (never a test or training image), or their
    first ``n``. Choose on it; report on :func:`test_set`."""
    return _canonical(split, "val", n, VALIDATION_SIZES, image_size)


test_set.__test__ = False  # not a pytest test, despite its name

__all__ = ["CANONICAL_SEED", "TOY_SPLITS", "TEST_SIZES", "VALIDATION_SIZES", "test_set", "validation_set"]
