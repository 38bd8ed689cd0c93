"""The hooked model: HookedCLIP, its towers and layers, weight rewrites, and loading a model by name."""

from hookedclip.model.hooked import HookedCLIP, HookedTextTransformer, HookedVisionTransformer
from hookedclip.model.resolve import load_model

__all__ = ["HookedCLIP", "HookedTextTransformer", "HookedVisionTransformer", "load_model"]
