"""``ToyWorld``: the world as a finite, indexable, seeded dataset, and the spurious splits.

Everything is seeded: :class:`ToyWorld` item ``i`` is a pure function of ``(seed, split, i)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from hookedclip.toy.attributes import SHAPES, TEXTURES, ToyAttributes, sample_attributes
from hookedclip.toy.render import render, render_batch
from hookedclip.toy.text import caption


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
    but, in the "train" split only, images of the SpuriousSpec's two class shapes have their
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
        (unchanged unless its shape is one of its SpuriousSpec's classes)."""
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
            "image": image,
            "mask": mask,
            "caption": text,
            "mentioned": mentioned,
            "attributes": attrs,
            "labels": attrs.labels(),
            "group": group,
            "index": i,
        }

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
