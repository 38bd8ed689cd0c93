"""PCLens: per-head principal components of direct contributions, labelled by text and images,
queried by concept, and kept or removed to steer the model.

The public API, gathered from the submodules, which import each other in one direction:
``core`` (PCA, labels, results, fitting) <- ``selection`` (interventions on chosen PCs) <-
``query`` (ranking PCs for a concept) <- ``debias`` (removing a spurious feature);
``recovered`` (accuracy recovered with K PCs per head) builds on ``core`` and TextSpan.
Submodules never import this package; other methods import only this package.
"""

from hookedclip.methods.pclens.core import (
    HeadPCA,
    PCLabel,
    PCLensResult,
    analysed_heads,
    choose_rank,
    fit,
    fit_from_contributions,
    fit_from_moments,
    fit_from_store,
    image_scores,
    label_pcs,
    model_identity,
    pca_from_data,
    pca_from_moments,
    projector,
    store_embedding_moments,
    store_heads,
    store_identity,
    store_moments,
    stream_moments,
    text_coordinates,
    top_images,
)
from hookedclip.methods.pclens.debias import (
    DebiasSweep,
    SpuriousTask,
    SweepPoint,
    debias_sweep,
    toy_task,
    waterbirds_task,
)
from hookedclip.methods.pclens.query import QueryEntry, QueryResult, QuerySystem, union
from hookedclip.methods.pclens.recovered import AccuracyRecovered, accuracy_recovered
from hookedclip.methods.pclens.selection import (
    PCSelection,
    amplify,
    apply_to_stack,
    keep,
    nearest_neighbours,
    remove,
    reweight,
    row_transform,
    selection_embeddings,
)
# any selection a context accepts, as a PCSelection checked against a result (raises before any work)
from hookedclip.methods.pclens.selection import _as_selection as as_selection

__all__ = [
    # core: one head's PCA, results, fitting
    "PCLabel", "HeadPCA", "PCLensResult", "choose_rank", "pca_from_data", "pca_from_moments", "text_coordinates",
    "projector", "label_pcs", "model_identity", "fit_from_moments", "fit_from_contributions", "analysed_heads",
    "stream_moments", "fit", "image_scores", "top_images",
    "store_heads", "store_moments", "store_embedding_moments", "store_identity", "fit_from_store",
    # selection: interventions on chosen PCs
    "PCSelection", "as_selection", "keep", "remove", "reweight", "amplify", "apply_to_stack", "row_transform",
    "selection_embeddings", "nearest_neighbours",
    # query: PCs for a concept
    "QuerySystem", "QueryResult", "QueryEntry", "union",
    # debias: removing a spurious feature
    "DebiasSweep", "SweepPoint", "SpuriousTask", "debias_sweep", "toy_task", "waterbirds_task",
    # recovered: accuracy recovered with K PCs per head
    "AccuracyRecovered", "accuracy_recovered",
]
