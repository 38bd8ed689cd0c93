"""hookedclip: mechanistic interpretability for CLIP vision transformers.

``HookedCLIP`` puts a named hook point on every attention head, MLP and residual stream
of CLIP's towers, converted exactly from open_clip and Hugging Face checkpoints.
"""

from hookedclip.cache import ActivationCache
from hookedclip.config import CLIPConfig, TextConfig, VisionConfig
from hookedclip.hooks import HookedRootModule, HookPoint
from hookedclip.model.hooked import HookedCLIP, HookedTextTransformer, HookedVisionTransformer

__all__ = [
    "ActivationCache",
    "CLIPConfig",
    "HookPoint",
    "HookedCLIP",
    "HookedRootModule",
    "HookedTextTransformer",
    "HookedVisionTransformer",
    "TextConfig",
    "VisionConfig",
]
__version__ = "0.1.0"
