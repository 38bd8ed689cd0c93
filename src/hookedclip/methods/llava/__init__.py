"""LLaVA encoder probing: the CLIP analyses on the patch tokens a LLaVA reads, and their effect
on its answers.

- :func:`hooked_vision_tower`: a context under which a ``transformers`` LLaVA takes its image
  features from a :class:`~hookedclip.HookedCLIP` (same weights), for ``forward`` and ``generate``.
- :func:`toy`: the shipped toy LLaVA (the toy CLIP's tower, a projector, a tiny Llama).
"""

from hookedclip.methods.llava.tower import LlavaTowerError, feature_layers, hidden_states, hooked_vision_tower
from hookedclip.methods.llava.toy_model import ANSWERS, QUESTIONS, ToyLlava, WordTokenizer, toy

__all__ = [
    "ANSWERS",
    "QUESTIONS",
    "LlavaTowerError",
    "ToyLlava",
    "WordTokenizer",
    "feature_layers",
    "hidden_states",
    "hooked_vision_tower",
    "toy",
]
