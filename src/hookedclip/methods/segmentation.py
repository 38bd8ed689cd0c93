"""Zero-shot segmentation from per-token head contributions (the TextSpan paper's segmentation;
the PCLens repository runs the same code).

For an image with predicted class ``ĉ = argmax(e @ W_cls)`` each source token ``t`` gets the
class scores of the heads' direct contributions through it,

    s_t = Σ_{l,h} φ(a^{l,h}_t) @ W_cls ∈ R^C        (MLPs excluded by default)

and the patch's heat-map value ``s_t[ĉ] − mean_c s_t[c]``. Patch values are laid out on the
patch grid, bilinearly upsampled to the image, clipped at zero and min–max normalised per
image (``Res``). The foreground is ``Res > mean(Res)``.

Metrics (:class:`SegmentationMetrics`) follow the reference: pixel accuracy and mIoU from
counts summed over the dataset, mAP as the mean over images of sklearn's average precision
of the one-hot ground truth against ``[1 − Res, Res]``. Each metric has a bootstrap interval
over images, and :func:`paired_difference` gives the difference of two maps scored on the same
images (e.g. a method and the centred-blob baseline) with a paired bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from sklearn.metrics import average_precision_score
from torch import Tensor

from hookedclip import plotting
from hookedclip.components import ALL_HEADS, ComponentLike, select
from hookedclip.data.batches import iter_labelled
from hookedclip.data.masks import MaskGeometry, resize_mask  # noqa: F401 (part of this module's API)
from hookedclip.decompose import needed_hooks, stack_from_cache
from hookedclip.identity import ModelIdentity
from hookedclip.names import act_name
from hookedclip.results import Result

# transform(rows [component, batch, pos, d'], labels) -> rows: applied to each chunk of
# per-token contributions before they are summed (a PC projection plugs in here).
RowTransform = Callable[[Tensor, list[str]], Tensor]
Components = ComponentLike | Sequence[ComponentLike]
Images = Float[Tensor, "batch channel height width"]


# ---------------------------------------------------------------------------- heat maps
def _chunks(comps: list) -> Iterator[list]:
    """Components grouped by layer (heads of one layer share a cached pattern): bounds the
    transient to one layer's ``[heads, batch, pos, d']`` rows."""
    group: list = []
    for comp in comps:
        if group and getattr(comp, "layer", None) != getattr(group[-1], "layer", None):
            yield group
            group = []
        group.append(comp)
    if group:
        yield group


@torch.no_grad()
def token_contributions(
    model, images: Images, components: Components = ALL_HEADS, transform: RowTransform | None = None
) -> tuple[Float[Tensor, "batch pos d_out"], Float[Tensor, "batch d_out"]]:
    """``Σ_c φ_c,t`` over the chosen components per source token, and the embedding ``e``.

    One forward pass; rows come from :func:`~hookedclip.decompose.stack_from_cache`
    (normalised by ``‖e‖``, ``ln_mode="reference"``) one layer at a time, each passed
    through ``transform`` before summing. Returns ``([batch, T, d'], e [batch, d'])``.
    """
    comps = select(model, components)
    wanted = needed_hooks(model, "visual", comps) | {act_name("out")}
    model.visual.check_images(images)
    with model.cache(names_filter=lambda n: n in wanted) as cache:
        model.encode_image(images)
    cache = dict(cache)
    embedding = cache[act_name("out")]
    total = None
    for chunk in _chunks(comps):
        stack = stack_from_cache(model, "visual", images, cache, embedding, positions="all", components=chunk)
        rows, labels = stack.tensor, stack.labels
        if labels[-1] == "rest":  # everything not requested: not part of the map
            rows, labels = rows[:-1], labels[:-1]
        if transform is not None:
            rows = transform(rows, labels)
        total = rows.sum(0) if total is None else total + rows.sum(0)
    return total, embedding


@torch.no_grad()
def patch_scores(
    model, images: Images, classifier, components: Components = ALL_HEADS, transform: RowTransform | None = None
) -> tuple[Float[Tensor, "batch pos n_classes"], Int[Tensor, " batch"]]:
    """Class scores ``s_t = Σ_c φ_c,t @ W_cls`` of every token (CLS included, at 0) and the
    model's prediction ``ĉ = argmax(e @ W_cls)`` for each image."""
    tokens, embedding = token_contributions(model, images, components, transform)
    W = classifier.weights.to(tokens)
    return tokens @ W, classifier.predict(embedding)


def token_map(
    scores: Float[Tensor, "batch pos n_classes"], target: Int[Tensor, " batch"]
) -> Float[Tensor, "batch pos"]:
    """``s_t[ĉ] − mean_c s_t[c]``: the class-mean subtraction makes the map blind to any
    score shared by all classes (a patch that is "image-like" in general)."""
    chosen = scores.gather(-1, target.view(-1, 1, 1).expand(-1, scores.shape[1], 1)).squeeze(-1)
    return chosen - scores.mean(-1)


def to_image(
    patch_values: Float[Tensor, "batch n_patches"], grid: tuple[int, int], size: tuple[int, int]
) -> Float[Tensor, "batch height width"]:
    """Patch values on the ``grid`` (row-major, as the patch embedding orders them),
    bilinearly upsampled to ``size``, negatives clipped, min–max normalised per image."""
    maps = patch_values.reshape(-1, 1, *grid)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
    return minmax(maps.clamp_min(0))


def minmax(maps: Float[Tensor, "batch height width"]) -> Float[Tensor, "batch height width"]:
    """Per-image ``(x − min) / (max − min)``; a constant map becomes 0 (the reference's
    NaN → 0)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).view(-1, 1, 1)
    out = (maps - lo.view(-1, 1, 1)) / span.where(span > 0, torch.ones_like(span))
    return out.where(span > 0, torch.zeros_like(out))


def patch_grid(model) -> tuple[int, int]:
    cfg = model.visual.cfg
    side = cfg.image_size // cfg.patch_size
    return side, side


@torch.no_grad()
def heatmaps(
    model,
    images: Images,
    classifier,
    components: Components = ALL_HEADS,
    transform: RowTransform | None = None,
    target: Int[Tensor, " batch"] | int | None = None,
) -> Float[Tensor, "batch height width"]:
    """Normalised heat maps ``Res ∈ [0, 1]`` of the class ``target`` (default: the model's
    own prediction ``ĉ``), one per image, at the image's resolution.

    Args:
        classifier: a :class:`~hookedclip.zeroshot.ZeroShotClassifier` (``W_cls [d', C]``).
        components: whose per-token contributions count (parsed by
            :func:`hookedclip.components.select`); default every head of every layer
            (``"heads"``). Per-layer or per-head maps: ``"L3"``, ``["L3H1"]``; MLPs can be
            added (``"mlp2"``).
        transform: ``transform(rows [component, batch, pos, d'], labels) -> rows``, applied
            per layer before summing (e.g. keep selected principal components).
        target: class index for every image, or per image; ``None``: ``ĉ``.
    """
    scores, predicted = patch_scores(model, images, classifier, components, transform)
    return scores_to_maps(model, scores, predicted if target is None else target, tuple(images.shape[-2:]))


def scores_to_maps(
    model, scores: Float[Tensor, "batch pos n_classes"], target: Int[Tensor, " batch"] | int, size: tuple[int, int]
) -> Float[Tensor, "batch height width"]:
    """The normalised heat maps ``Res`` of the class ``target`` from :func:`patch_scores`'s token
    scores: :func:`token_map` on the patch tokens, laid out on the grid and upsampled to ``size``."""
    target = torch.as_tensor(target, device=scores.device).expand(scores.shape[0])
    first = int(model.visual.cfg.class_token)  # patches only: CLS has no place on the grid
    return to_image(token_map(scores, target)[:, first:], patch_grid(model), size)


def centre_blob(height: int, width: int, sigma: float = 0.25, batch: int = 1) -> Float[Tensor, "batch height width"]:
    """Baseline heat map: a Gaussian at the image centre, ``sigma`` a fraction of the side,
    min–max normalised. Any map must beat "objects tend to be in the middle"."""
    y = (torch.arange(height, dtype=torch.float32) + 0.5) / height - 0.5
    x = (torch.arange(width, dtype=torch.float32) + 0.5) / width - 0.5
    blob = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    return minmax(blob.expand(batch, height, width).contiguous())


def binarize(res: Float[Tensor, "batch height width"]) -> Bool[Tensor, "batch height width"]:
    """Foreground where ``Res > mean(Res)`` (per image), the reference's threshold."""
    return res > res.flatten(1).mean(1).view(-1, 1, 1)


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
        return f"Segmentation metrics of {self.model or 'no recorded model'}"

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


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model,
    batches: Iterable[tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]],
    classifier,
    components: Components = ALL_HEADS,
    transform: RowTransform | None = None,
    blob_sigma: float = 0.25,
) -> dict[str, dict[str, float]]:
    """Metrics of the model's heat maps and of the centred-blob baseline, each dict with an
    ``"intervals"`` entry: 95% percentile-bootstrap intervals over images (:meth:`SegmentationMetrics.intervals`).
    The model's dict also has ``"vs_blob"``: its difference from the blob on the same images with a paired
    95% bootstrap interval, ``{metric: (difference, low, high)}`` (:func:`paired_difference`).

    ``batches`` yields ``(images [B, C, H, W], masks bool [B, H, W])``, optionally with a
    third entry ``targets [B]`` (class to map; default the prediction ``ĉ``). Masks must
    already be in the images' geometry (see :func:`resize_mask`).
    """
    ours, blob = SegmentationMetrics(), SegmentationMetrics()
    for images, masks, target in iter_labelled(batches, model, names=("masks", "targets")):
        ours.update(heatmaps(model, images, classifier, components, transform, target).float(), masks)
        blob.update(centre_blob(*masks.shape[-2:], sigma=blob_sigma, batch=masks.shape[0]), masks)
    metrics = {name: acc.compute() | {"intervals": acc.intervals()} for name, acc in (("model", ours), ("blob", blob))}
    metrics["model"]["vs_blob"] = paired_difference(ours, blob)
    return metrics


def toy_batches(
    model, world, batch_size: int = 64, attribute: str | None = None, classnames: Sequence[str] | None = None
) -> Iterator[tuple[Tensor, ...]]:
    """``(images, masks[, targets])`` batches of a :class:`~hookedclip.toy.world.ToyWorld`;
    with ``attribute``, targets are each image's true value of it, as indices in
    ``classnames`` (the ground-truth-class map instead of the predicted-class map)."""
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.world import render_batch

    for start in range(0, len(world), batch_size):
        attrs = world.attributes(range(start, min(start + batch_size, len(world))))
        pixels, masks = render_batch(attrs, world.image_size)
        images = images_to_tensor(pixels, model.cfg.image_mean, model.cfg.image_std)
        if attribute is None:
            yield images, torch.from_numpy(masks)
        else:
            targets = torch.tensor([list(classnames).index(getattr(a, attribute)) for a in attrs])
            yield images, torch.from_numpy(masks), targets


def evaluate_toy(
    model,
    n: int = 200,
    seed: int | None = None,
    attribute: str = "shape",
    use_labels: bool = False,
    components=ALL_HEADS,
    transform: RowTransform | None = None,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """:func:`evaluate` on the first ``n`` images of the canonical world test set
    (:func:`hookedclip.toy.splits.test_set`; masks known exactly), with the zero-shot classifier
    of ``attribute``. ``seed``: a fresh test sample instead. ``use_labels``: map the true class, not ``ĉ``."""
    from hookedclip.toy.splits import test_set
    from hookedclip.toy.world import ToyWorld, class_prompts
    from hookedclip.zeroshot import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_prompts(model, class_prompts(attribute))
    size = model.visual.cfg.image_size
    world = (
        test_set("world", n, image_size=size) if seed is None else ToyWorld(n, seed=seed, split="test", image_size=size)
    )
    batches = toy_batches(model, world, batch_size, attribute if use_labels else None, classifier.classnames)
    return evaluate(model, batches, classifier, components, transform)


# ---------------------------------------------------------------------------- figures
@torch.no_grad()
def save_overlays(
    model,
    pixels: np.ndarray,
    classifier,
    path,
    masks: np.ndarray | None = None,
    components: Components = ALL_HEADS,
    transform: RowTransform | None = None,
    target: Int[Tensor, " batch"] | int | None = None,
    cols: int = 6,
    labels: Sequence[int] | None = None,
):
    """A PNG grid for a person to look at: each uint8 image ``[N, H, W, 3]`` with its
    ground-truth contour, next to its heat map (:func:`hookedclip.plotting.heatmap_overlays`).

    Titles: ``"pred: X / true: Y"`` with the true class indices ``labels`` (in the
    classifier's classes), ``"pred: X"`` without; with an explicit ``target``, ``"map: X"``
    (the mapped class), plus ``"/ pred: ..."`` of the model. ``pixels`` must already be at the
    model's input size; they are normalised with the model's mean and std.
    """
    from hookedclip.toy.model import images_to_tensor

    images = images_to_tensor(pixels, model.cfg.image_mean, model.cfg.image_std).to(model.device, model.dtype)
    scores, predicted = patch_scores(model, images, classifier, components, transform)  # one forward for both
    maps = scores_to_maps(model, scores, predicted if target is None else target, tuple(images.shape[-2:]))
    maps, predicted = maps.float().cpu(), predicted.tolist()
    names = classifier.classnames
    captions = [f"pred: {names[c]}" for c in predicted]
    if target is not None:
        mapped = torch.as_tensor(target).expand(len(pixels)).tolist()
        captions = [f"map: {names[t]} / {c}" for t, c in zip(mapped, captions)]
    if labels is not None:
        captions = [f"{c} / true: {names[int(y)]}" for c, y in zip(captions, labels)]
    return plotting.heatmap_overlays(pixels, maps.numpy(), masks, path, captions, cols)


__all__ = [
    "METRIC_NAMES",
    "RowTransform",
    "SegmentationMetrics",
    "binarize",
    "centre_blob",
    "difference_text",
    "evaluate",
    "evaluate_toy",
    "heatmaps",
    "image_ap",
    "metric_text",
    "minmax",
    "paired_difference",
    "patch_grid",
    "patch_scores",
    "resize_mask",
    "save_overlays",
    "scores_to_maps",
    "to_image",
    "token_contributions",
    "token_map",
    "toy_batches",
]
