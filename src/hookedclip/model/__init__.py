"""The hooked model: HookedCLIP, its towers and layers, and weight rewrites."""

from hookedclip.model.hooked import HookedCLIP, HookedTextTransformer, HookedVisionTransformer

__all__ = ["HookedCLIP", "HookedTextTransformer", "HookedVisionTransformer"]
