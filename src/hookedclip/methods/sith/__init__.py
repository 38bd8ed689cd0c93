"""SITH: reading what attention heads write straight from their weights.

Each head's value-output circuit ``VO_h = W_V[h] W_O[h]`` is split by an SVD into ``d_head``
channels (:func:`head_svd`); the write direction of each channel is mapped into the joint
image-text space (:func:`to_joint`) and explained as a short, non-negative combination of concept
embeddings (:func:`comp`, with the baselines :func:`nnomp`, :func:`matching_pursuit`,
:func:`top_k` and :func:`lasso`). No images are needed except, optionally, for the image mean.

:func:`dictionary` builds the concept :class:`Dictionary` (a file, a built-in vocabulary, a list or
a tensor); :func:`decompose` runs the whole method on one layer and returns a :class:`SithResult`;
:func:`fidelity_study` compares the pursuits; :func:`suppress` edits the vectors picked by concept
(:meth:`SithResult.select`) and measures worst-group accuracy on a spurious-feature task.

Modules, importing each other in one direction: ``nnls``, ``screen`` <- ``pursuit`` <- ``dictionary``;
``svd`` <- ``edit`` (:func:`edit`, :func:`edited`: scaling singular channels); ``joint``;
``result`` <- ``decompose`` (all of the above) <- ``study`` (:class:`FidelityStudy`) and
``suppress`` (:class:`Suppression`).
"""

from hookedclip.methods.sith.decompose import METHODS, check_architecture, decompose
from hookedclip.methods.sith.dictionary import Dictionary, dictionary
from hookedclip.methods.sith.edit import edit, edited
from hookedclip.methods.sith.joint import image_mean, image_mean_from_store, to_joint
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
from hookedclip.methods.sith.result import SithResult
from hookedclip.methods.sith.study import ALL_METHODS, FidelityStudy, coherence, fidelity_study
from hookedclip.methods.sith.suppress import (
    WATERBIRDS_BACKGROUND_WORDS,
    Suppression,
    suppress,
    vectors_by_concept,
)
from hookedclip.methods.sith.svd import HeadSVD, head_factors, head_svd

__all__ = [
    "ALL_METHODS",
    "MAX_MEMORY",
    "METHODS",
    "WATERBIRDS_BACKGROUND_WORDS",
    "FidelityStudy",
    "Suppression",
    "Dictionary",
    "HeadSVD",
    "Pursuit",
    "SithResult",
    "check_architecture",
    "coherence",
    "comp",
    "decompose",
    "dictionary",
    "edit",
    "edited",
    "fidelity_study",
    "head_factors",
    "head_svd",
    "image_mean",
    "image_mean_from_store",
    "lasso",
    "matching_pursuit",
    "nnomp",
    "prepare_dictionary",
    "suppress",
    "to_joint",
    "top_k",
    "vectors_by_concept",
]
