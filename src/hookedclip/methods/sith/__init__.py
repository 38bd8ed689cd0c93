"""SITH: reading what attention heads write straight from their weights.

Each head's value-output circuit ``VO_h = W_V[h] W_O[h]`` is split by an SVD into ``d_head``
channels (:func:`head_svd`); the write direction of each channel is mapped into the joint
image-text space (:func:`to_joint`) and explained as a short, non-negative combination of concept
embeddings (:func:`comp`, with the baselines :func:`nnomp`, :func:`matching_pursuit`,
:func:`top_k` and :func:`lasso`). No images are needed except, optionally, for the image mean.

Modules, importing each other in one direction: ``nnls`` <- ``pursuit``; ``svd`` <- ``edit``
(:func:`edit`, :func:`edited`: scaling singular channels); ``joint``.
"""

from hookedclip.methods.sith.edit import edit, edited
from hookedclip.methods.sith.joint import image_mean, to_joint
from hookedclip.methods.sith.pursuit import (
    MAX_MEMORY,
    Pursuit,
    comp,
    lasso,
    matching_pursuit,
    nnomp,
    prepare_dictionary,
    top_k,
)
from hookedclip.methods.sith.svd import HeadSVD, head_factors, head_svd

__all__ = [
    "MAX_MEMORY",
    "HeadSVD",
    "Pursuit",
    "comp",
    "edit",
    "edited",
    "head_factors",
    "head_svd",
    "image_mean",
    "lasso",
    "matching_pursuit",
    "nnomp",
    "prepare_dictionary",
    "to_joint",
    "top_k",
]
