"""Heat maps: each patch's score for a class, from the heads' per-token direct contributions."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from hookedclip.components import ALL_HEADS, ComponentLike, select
from hookedclip.data.masks import MaskGeometry, resize_mask  # noqa: F401 (part of this module's API)
from hookedclip.decompose import needed_hooks, stack_from_cache
from hookedclip.names import act_name

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
