"""``batches``: the one way data is passed to every method.

``batches`` is an iterable of image tensors ``[B, C, H, W]``, or of tuples (or lists, as a
``DataLoader`` over a ``TensorDataset`` yields them) ``(images, labels)`` /
``(images, labels, groups)`` with ``labels`` and ``groups`` ``[B]``. A bare image tensor is
one batch. Methods that need no labels read only the images of labelled batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from jaxtyping import Float, Int
from torch import Tensor

_FORMS = "an iterable of image tensors [B, C, H, W] or of (images, labels[, groups]) tuples"


class Batch(NamedTuple):
    """One labelled batch: ``images [B, C, H, W]``, ``labels [B]`` and ``groups [B]`` (or ``None``)."""

    images: Float[Tensor, "batch channel height width"]
    labels: Int[Tensor, " batch"]
    groups: Int[Tensor, " batch"] | None = None


def iter_images(batches, model=None) -> Iterator[Float[Tensor, "batch channel height width"]]:
    """The images of every batch (labels and groups dropped); moved to ``model``'s device and
    dtype when a model is given."""
    for i, batch in enumerate(_as_iterable(batches)):
        images = batch[0] if _is_tuple(batch) else batch
        yield _moved(_checked_images(images, i), model)


def iter_labelled(batches, model=None, names: tuple[str, str] = ("labels", "groups")) -> Iterator[Batch]:
    """Every batch as :class:`Batch` ``(images, labels, groups or None)``; a batch without labels
    (e.g. bare images) is refused. ``names``: what the second and third entries are called in
    errors (segmentation reads ``("masks", "targets")``)."""
    for i, batch in enumerate(_as_iterable(batches)):
        if not _is_tuple(batch) or not 2 <= len(batch) <= 3:
            got = f"a tensor of shape {tuple(batch.shape)}" if isinstance(batch, Tensor) else _describe(batch)
            raise TypeError(
                f"batch {i}: this method needs {names[0]}, so each batch must be a tuple "
                f"(images, {names[0]}[, {names[1]}]); got {got}"
            )
        images = _checked_images(batch[0], i)
        extra = [_checked_rows(x, images.shape[0], name, i) for x, name in zip(batch[1:], names)]
        yield Batch(_moved(images, model), *extra)


def check_reiterable(batches, who: str) -> None:
    """``who`` reads ``batches`` twice: refuse a one-shot iterator (its second pass would be empty)."""
    if isinstance(batches, Iterator):
        raise TypeError(
            f"{who} reads the batches twice: pass a list or a DataLoader, not a one-shot "
            f"iterator or generator ({type(batches).__name__})"
        )


def _as_iterable(batches) -> Iterable:
    if isinstance(batches, Tensor):
        if batches.ndim != 4:
            raise ValueError(f"a bare tensor is one batch of images [B, C, H, W]; got shape {tuple(batches.shape)}")
        return [batches]
    if isinstance(batches, (dict, str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(f"batches must be {_FORMS}; got {_describe(batches)}")
    return batches


def _is_tuple(batch) -> bool:
    return isinstance(batch, (tuple, list)) and len(batch) > 0


def _checked_images(images, i: int) -> Tensor:
    if isinstance(images, Tensor) and images.ndim == 4:
        return images
    if isinstance(images, dict):
        raise TypeError(
            f"batch {i} is a dict (keys {sorted(images)}); pass tuples instead, e.g. "
            "((b['image'], b['label']) for b in loader)"
        )
    got = f"a tensor of shape {tuple(images.shape)}" if isinstance(images, Tensor) else _describe(images)
    hint = " (one labelled batch? wrap it in a list: [(images, labels)])" if isinstance(images, Tensor) else ""
    raise TypeError(f"batch {i}: expected images [B, C, H, W], got {got}{hint}; batches must be {_FORMS}")


def _checked_rows(x, n: int, name: str, i: int):
    if len(x) != n:
        raise ValueError(f"batch {i} has {n} images but {len(x)} {name}")
    return x


def _moved(images: Tensor, model) -> Tensor:
    return images if model is None else images.to(model.device, model.dtype)


def _describe(x) -> str:
    return f"{type(x).__name__}" + (f" of length {len(x)}" if isinstance(x, (tuple, list)) else "")
