"""Component outputs on images, and their dataset means (what :func:`~hookedclip.ablation.mean_ablate` puts in)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip.ablation.engine import Mode, _check_mode
from hookedclip.components import ALL_COMPONENTS, Component, ComponentLike, Head, select
from hookedclip.data.batches import iter_images
from hookedclip.decompose import decompose_image
from hookedclip.names import component_hook


def _outputs_on(model, comps: list[Component], images: Tensor, mode: Mode) -> dict[str, Tensor]:
    """Each component's output on ``images`` in the space ``mode`` edits."""
    with torch.no_grad():
        if mode == "direct":
            stack = decompose_image(model, images, components=[str(c) for c in comps])
            return {label: row for label, row in zip(stack.labels, stack.tensor) if label != "rest"}
        names = {component_hook(c) for c in comps}
        _, cache = model.run_with_cache(images, names_filter=lambda n: n in names)
        return {str(c): _slice(cache[component_hook(c)], c) for c in comps}


def _slice(x: Tensor, c: Component) -> Tensor:
    return x[:, :, c.head] if isinstance(c, Head) else x


def component_means(
    model,
    batches,
    components: ComponentLike | Sequence[ComponentLike] = ALL_COMPONENTS,
    mode: Mode = "direct",
) -> dict[str, Float[Tensor, "*shape"]]:
    """Dataset means of component outputs for :func:`~hookedclip.ablation.mean_ablate`,
    accumulated in float64 over ``batches`` (never the batch under test unless you pass it).

    Args:
        batches: image tensors ``[B, C, H, W]`` or ``(images, labels[, groups])`` tuples
            (:mod:`hookedclip.data.batches`; labels are not read); a bare tensor is one batch.
        components: the components to average (``"L10H3"``, ``"mlp9"``, ``"L8-11"``, ...; see
            :func:`hookedclip.components.select`). Default: every component
            (:data:`~hookedclip.components.ALL_COMPONENTS`).
        mode: ``"direct"``: mean decomposition rows ``[d_out]`` (normalised, reference LN
            convention); ``"total"``: mean hook activations per position (``[pos, d_head]`` for
            heads, ``[pos, d_model]`` for MLPs and the embedding slot).

    Returns:
        ``{label: mean}`` in the model's dtype, one entry per component.
    """
    if components is None:
        warnings.warn(
            "component_means(components=None) is deprecated; pass components=ALL_COMPONENTS "
            "(hookedclip.components) for every component",
            DeprecationWarning,
            stacklevel=2,
        )
        components = ALL_COMPONENTS
    _check_mode(mode)
    comps = select(model, components)
    sums: dict[str, Tensor] = {}
    count = 0
    for images in iter_images(batches, model):
        for label, value in _outputs_on(model, comps, images, mode).items():
            total = value.double().sum(0)
            sums[label] = sums[label] + total if label in sums else total
        count += images.shape[0]
    if count == 0:
        raise ValueError("component_means got no images: pass at least one batch of images [B, C, H, W]")
    return {label: (s / count).to(model.dtype) for label, s in sums.items()}
