"""Segmentation metrics (pixel accuracy, mIoU, mAP) with bootstrap intervals over images, and
the paired difference of two maps scored on the same images."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Bool, Float
from sklearn.metrics import average_precision_score
from torch import Tensor

from hookedclip.data.masks import MaskGeometry, resize_mask  # noqa: F401 (part of this module's API)
from hookedclip.identity import ModelIdentity, model_label
from hookedclip.methods.segmentation.maps import binarize
from hookedclip.results import Result


# ---------------------------------------------------------------------------- metrics
@dataclass(repr=False)
class SegmentationMetrics(Result):
    """Streaming accumulator of pixel accuracy, mIoU (bg, fg) and mAP over a dataset.

    ``update(res, gt)`` takes heat maps ``Res ∈ [0, 1]`` and boolean ground truth; only
    counts and one AP per image are kept, so memory does not grow with image size.
    ``per_image``: each image's ``[correct, labelled, ∩bg, ∪bg, ∩fg, ∪fg]`` pixel counts, for
    :meth:`intervals`. ``model``: the identity of the model whose maps were scored, when it is recorded.
    """

    _kind = "segmentation"
    _tensor_fields = ("intersection", "union")
    _json_fields = ("correct", "labeled", "ap", "per_image")

    correct: int = 0
    labeled: int = 0
    intersection: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.int64))
    union: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.int64))
    ap: list[float] = field(default_factory=list)
    model: ModelIdentity | None = None
    per_image: list[list[int]] = field(default_factory=list)

    # ---- the Result protocol: one row, the dataset's metrics
    def _title(self) -> str:
        return f"Segmentation metrics of {model_label(self.model)}"

    def _table(self) -> tuple[list[str], list[list]]:
        metrics = self.compute()
        return list(metrics), [list(metrics.values())]

    def _repr_sizes(self) -> dict:
        return {"images": len(self.ap), "pixels": self.labeled}

    def update(self, res: Float[Tensor, "batch height width"], gt: Bool[Tensor, "batch height width"]) -> None:
        res = torch.as_tensor(res, dtype=torch.float64).cpu()
        gt = torch.as_tensor(gt).cpu().bool()
        if res.ndim == 2:
            res, gt = res[None], gt[None]
        if res.shape != gt.shape:
            raise ValueError(f"heat maps {tuple(res.shape)} and masks {tuple(gt.shape)} differ in shape")
        pred = binarize(res)
        self.correct += int((pred == gt).sum())
        self.labeled += gt.numel()  # every pixel is labelled in ImageNet-seg and the toy world
        for cls, (p, g) in enumerate(((~pred, ~gt), (pred, gt))):
            self.intersection[cls] += int((p & g).sum())
            self.union[cls] += int((p | g).sum())
        for r, g, p in zip(res, gt, pred):
            self.ap.append(image_ap(r, g))
            counts = [int((p == g).sum()), g.numel()]
            for q, h in ((~p, ~g), (p, g)):
                counts += [int((q & h).sum()), int((q | h).sum())]
            self.per_image.append(counts)

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """Combined counts of two accumulators (e.g. shards)."""
        return SegmentationMetrics(
            self.correct + other.correct,
            self.labeled + other.labeled,
            self.intersection + other.intersection,
            self.union + other.union,
            self.ap + other.ap,
            model=self.model or other.model,
            per_image=self.per_image + other.per_image,
        )

    def compute(self) -> dict[str, float]:
        """``{"pixel_accuracy", "miou", "map", "n_images"}``, fractions in [0, 1]."""
        eps = np.spacing(1)  # the reference's guard against 0 / 0
        return {
            "pixel_accuracy": float(self.correct / (eps + self.labeled)),
            "miou": float((self.intersection / (eps + self.union)).mean()),
            "map": float(np.mean(self.ap)) if self.ap else float("nan"),
            "n_images": len(self.ap),
        }

    def intervals(self, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict[str, tuple[float, float]]:
        """Percentile-bootstrap intervals over images of ``pixel_accuracy``, ``miou`` and ``map``.

        The images are resampled with replacement ``n_boot`` times and each metric recomputed as
        :meth:`compute` does (pooled pixel counts for pixel accuracy and mIoU, the mean AP), so the
        interval says how much the dataset's number would move with another sample of images.
        Needs the per-image counts (accumulators saved before they were recorded have none)."""
        self._check_per_image()
        idx = np.random.default_rng(seed).integers(0, len(self.per_image), size=(n_boot, len(self.per_image)))
        return {k: _percentiles(v, level) for k, v in self._resampled(idx).items()}

    def _check_per_image(self) -> None:
        if not self.per_image:
            raise ValueError("no per-image counts recorded: score the images again with update() to get intervals")

    def _resampled(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric recomputed on every row of image indices ``idx [n_boot, n]``: ``{name: [n_boot]}``."""
        counts = np.asarray(self.per_image, dtype=np.float64)  # [n, 6]
        sums = counts[idx].sum(1)  # [n_boot, 6]
        eps = np.spacing(1)
        return {
            "pixel_accuracy": sums[:, 0] / (eps + sums[:, 1]),
            "miou": (sums[:, 2] / (eps + sums[:, 3]) + sums[:, 4] / (eps + sums[:, 5])) / 2,
            "map": np.asarray(self.ap, dtype=np.float64)[idx].mean(1),
        }


METRIC_NAMES = ("pixel_accuracy", "miou", "map")


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    return tuple(float(q) for q in np.percentile(samples, [tail, 100 - tail]))


def paired_difference(
    a: SegmentationMetrics,
    b: SegmentationMetrics,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    paired: bool = True,
) -> dict[str, tuple[float, float, float]]:
    """``a − b`` of each metric with its percentile-bootstrap interval over images:
    ``{"pixel_accuracy" | "miou" | "map": (difference, low, high)}``, fractions.

    ``a`` and ``b`` must have scored the same images in the same order (e.g. a method's maps and
    the centred blob's, as :func:`evaluate` does). Paired: each resample draws one set of images and
    recomputes both metrics on it, so what the two share (an image that is easy for every map)
    cancels and the interval is that of the difference itself. ``paired=False`` resamples the two
    independently, as if they had been measured on different images (wider when they agree per image).
    The difference is ``a.compute()[k] − b.compute()[k]``, the figure a reader sees."""
    a._check_per_image()
    b._check_per_image()
    n = len(a.per_image)
    if paired and len(b.per_image) != n:
        raise ValueError(
            f"a paired difference needs the same images: {n} vs {len(b.per_image)} scored; "
            "score both maps on the same batches (or pass paired=False)"
        )
    rng = np.random.default_rng(seed)
    idx_a = rng.integers(0, n, size=(n_boot, n))
    idx_b = idx_a if paired else rng.integers(0, len(b.per_image), size=(n_boot, len(b.per_image)))
    samples_a, samples_b = a._resampled(idx_a), b._resampled(idx_b)
    point_a, point_b = a.compute(), b.compute()
    return {
        k: (float(point_a[k] - point_b[k]), *_percentiles(samples_a[k] - samples_b[k], level)) for k in METRIC_NAMES
    }


def difference_text(difference: tuple[float, float, float], digits: int = 1) -> str:
    """A :func:`paired_difference` entry in points with its interval, e.g. ``"+1.2 [+0.3, +2.1]"``."""
    value, low, high = (100 * v for v in difference)
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def metric_text(metrics: dict, name: str, digits: int = 1) -> str:
    """``metrics[name]`` in % with its 95% bootstrap interval when ``metrics`` has ``"intervals"``
    (as :func:`evaluate` returns), e.g. ``"57.3 [55.0, 59.6]"``."""
    low_high = metrics.get("intervals", {}).get(name)
    text = f"{100 * metrics[name]:.{digits}f}"
    return text if low_high is None else f"{text} [{100 * low_high[0]:.{digits}f}, {100 * low_high[1]:.{digits}f}]"


def image_ap(res: Float[Tensor, "height width"], gt: Bool[Tensor, "height width"]) -> float:
    """Average precision of the flattened one-hot ground truth ``[bg, fg]`` against the
    scores ``[1 − Res, Res]`` (one number per image, NaN → 0 as in the reference)."""
    res = torch.as_tensor(res, dtype=torch.float64).cpu().numpy().ravel()
    fg = torch.as_tensor(gt).cpu().numpy().astype(np.int64).ravel()
    truth = np.concatenate([1 - fg, fg])
    scores = np.concatenate([1 - res, res])
    return float(np.nan_to_num(average_precision_score(truth, scores)))
