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

from hookedclip.data.masks import resize_mask
from hookedclip.methods.segmentation.evaluate import evaluate, evaluate_toy, save_overlays, toy_batches
from hookedclip.methods.segmentation.maps import (
    RowTransform,
    binarize,
    centre_blob,
    heatmaps,
    minmax,
    patch_grid,
    patch_scores,
    scores_to_maps,
    to_image,
    token_contributions,
    token_map,
)
from hookedclip.methods.segmentation.metrics import (
    METRIC_NAMES,
    SegmentationMetrics,
    difference_text,
    image_ap,
    metric_text,
    paired_difference,
)

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
