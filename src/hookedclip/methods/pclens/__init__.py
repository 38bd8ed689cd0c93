"""PCLens: per-head principal components of direct contributions, labelled by text and images,
queried by concept, and kept or removed to steer the model.

The public API, gathered from the submodules, which import each other in one direction:
``confidence`` (weak labels) <- ``head`` (one head's PCs and labels) <- ``pca`` (PCA, rank rule, text labels, projector, image
scores) <- ``result`` (``PCLensResult``) <- ``fit`` (fitting from a model, moments or a store);
``result`` <- ``selection`` (interventions on chosen PCs) <- ``query`` (ranking PCs for a
concept) <- ``debias`` (the sweep removing a spurious feature), which uses ``sweep_result``
(``SweepPoint``, ``DebiasSweep``) and ``spurious`` (the tasks: ``SpuriousTask``, toy,
Waterbirds); ``recovered`` (accuracy recovered with K PCs per head) builds on ``fit`` and
TextSpan, and returns a ``recovered_result`` (``AccuracyRecovered``). Submodules never import this package; other methods import only this package.
"""

from hookedclip.identity import model_identity
from hookedclip.methods._common import store_embedding_moments, store_heads, store_moments
from hookedclip.methods.pclens.confidence import LOW_COSINE, confidence_note, label_text, low_confidence
from hookedclip.methods.pclens.debias import debias_sweep
from hookedclip.methods.pclens.fit import *  # noqa: F403 (the names are fit.__all__, re-exported below)
from hookedclip.methods.pclens.fit import __all__ as _fit_names
from hookedclip.methods.pclens.head import HeadPCA, PCLabel, format_strength
from hookedclip.methods.pclens.pca import *  # noqa: F403 (the names are pca.__all__, re-exported below)
from hookedclip.methods.pclens.pca import __all__ as _pca_names
from hookedclip.methods.pclens.query import QueryEntry, QueryResult, QuerySystem, union
from hookedclip.methods.pclens.recovered import accuracy_recovered
from hookedclip.methods.pclens.recovered_result import AccuracyRecovered
from hookedclip.methods.pclens.result import PCLensResult
from hookedclip.methods.pclens.selection import (
    PCSelection,
    amplify,
    apply_to_stack,
    as_selection,
    keep,
    nearest_neighbours,
    remove,
    reweight,
    row_transform,
    selection_embeddings,
)
from hookedclip.methods.pclens.spurious import SpuriousTask, toy_task, waterbirds_task
from hookedclip.methods.pclens.sweep_result import DebiasSweep, SweepPoint

__all__ = [
    # one head's PCA, labels and images
    "PCLabel",
    "HeadPCA",
    "format_strength",
    *_pca_names,
    # how far to trust a label
    "LOW_COSINE",
    "low_confidence",
    "label_text",
    "confidence_note",
    # the result and fitting
    "PCLensResult",
    "model_identity",
    *_fit_names,
    "store_heads",
    "store_moments",
    "store_embedding_moments",
    # selection: interventions on chosen PCs
    "PCSelection",
    "as_selection",
    "keep",
    "remove",
    "reweight",
    "amplify",
    "apply_to_stack",
    "row_transform",
    "selection_embeddings",
    "nearest_neighbours",
    # query: PCs for a concept
    "QuerySystem",
    "QueryResult",
    "QueryEntry",
    "union",
    # debias: removing a spurious feature
    "DebiasSweep",
    "SweepPoint",
    "SpuriousTask",
    "debias_sweep",
    "toy_task",
    "waterbirds_task",
    # recovered: accuracy recovered with K PCs per head
    "AccuracyRecovered",
    "accuracy_recovered",
]
