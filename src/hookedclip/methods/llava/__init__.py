"""LLaVA encoder probing: the CLIP analyses on the patch tokens a LLaVA reads, and their effect
on its answers.

- :func:`hooked_vision_tower`: a context under which a ``transformers`` LLaVA takes its image
  features from a :class:`~hookedclip.HookedCLIP` (same weights), for ``forward`` and ``generate``.
"""

from hookedclip.methods.llava.tower import LlavaTowerError, feature_layers, hidden_states, hooked_vision_tower

__all__ = ["LlavaTowerError", "feature_layers", "hidden_states", "hooked_vision_tower"]
