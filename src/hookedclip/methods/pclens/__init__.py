"""PCLens: per-head principal components of direct contributions, labelled by text and images,
queried by concept, and kept or removed to steer the model."""

from hookedclip.methods.pclens.core import *  # noqa: F403
from hookedclip.methods.pclens.core import __all__  # noqa: F401
