"""LLaVA encoder probing: the CLIP analyses on the patch tokens a LLaVA reads, and their effect
on its answers.

- :func:`hooked_vision_tower`: a context under which a ``transformers`` LLaVA takes its image
  features from a :class:`~hookedclip.HookedCLIP` (same weights), for ``forward`` and ``generate``.
- :func:`decompose_features`, :func:`through_projector`: the features LLaVA reads split into
  one row per component, in the tower's width and through the projector.
- :func:`norm_shares`: attention vs MLP norm shares per layer, patch tokens against the class token.
- :func:`ablation_effects`, :func:`layer_sweep`: mean-ablate components (total mode, per-position
  means) and measure the LLaVA's answers next to CLIP's zero-shot accuracy on the same stream.
- :func:`toy`: the shipped toy LLaVA (the toy CLIP's tower, a projector, a tiny Llama).
"""

from hookedclip.methods.llava.effect import AblationEffects, ablation_effects, layer_selections, layer_sweep
from hookedclip.methods.llava.features import (
    ProjectedFeatures,
    decompose_features,
    feature_layer_of,
    through_projector,
)
from hookedclip.methods.llava.means import means_from_store
from hookedclip.methods.llava.shares import NormShares, norm_shares
from hookedclip.methods.llava.tower import LlavaTowerError, feature_layers, hidden_states, hooked_vision_tower
from hookedclip.methods.llava.toy_model import ANSWERS, QUESTIONS, ToyLlava, WordTokenizer, toy

__all__ = [
    "AblationEffects",
    "ANSWERS",
    "QUESTIONS",
    "LlavaTowerError",
    "NormShares",
    "ProjectedFeatures",
    "ToyLlava",
    "WordTokenizer",
    "ablation_effects",
    "decompose_features",
    "feature_layer_of",
    "feature_layers",
    "hidden_states",
    "hooked_vision_tower",
    "layer_selections",
    "layer_sweep",
    "means_from_store",
    "norm_shares",
    "through_projector",
    "toy",
]
