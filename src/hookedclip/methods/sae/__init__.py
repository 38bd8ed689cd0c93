"""Sparse autoencoders on the residual stream.

A :class:`TopKSAE` encodes a residual vector ``h`` into a code ``a`` with exactly ``k`` active
latents and decodes it as a sum of unit-norm atoms; :func:`splice` puts it into a model's forward
pass as an engine context; :func:`from_reference` reads the published weight-normalised
checkpoints.

Attribution to the latents (Act×Grad, its baselines, deletion and insertion curves, unexpected
reliance, latent augmentation) lives in ``attribution``, ``baselines``, ``faithfulness``,
``reliance`` and ``augmentation``.

Modules, importing each other in one direction: ``model`` <- ``reference``, ``splice``;
``splice`` <- ``gallery`` (top-activating samples) <- ``labels`` (latent embeddings, alignment
with a vocabulary, clarity); ``train_config``, ``train_data``, ``train_log`` <- ``train`` <-
``pretrained`` (the shipped toy autoencoder); ``model``, ``splice``, ``readout``,
``attribution_result`` <- ``attribution`` <- ``baselines``; ``faithfulness_result`` <-
``faithfulness``; ``attribution_result`` <- ``reliance``; ``augmentation``.
"""

from hookedclip.methods.sae.attribution import attribute
from hookedclip.methods.sae.attribution_result import Attribution
from hookedclip.methods.sae.augmentation import (
    augmentation_checks,
    augmented_embeddings,
    label_correlation,
    latent_augmentation,
    mean_latent_attribution,
    resample_values,
    train_augmented_probe,
    train_probe,
)
from hookedclip.methods.sae.baselines import act_times_logit_lens, energy, logit_lens, method_scores, random_active
from hookedclip.methods.sae.faithfulness import faithfulness
from hookedclip.methods.sae.faithfulness_result import Faithfulness
from hookedclip.methods.sae.gallery import (
    TopActivations,
    TopNAccumulator,
    latent_statistic,
    top_activations,
    top_activations_from_store,
)
from hookedclip.methods.sae.labels import *  # noqa: F403 (the names are labels.__all__, re-exported below)
from hookedclip.methods.sae.labels import __all__ as _labels_names
from hookedclip.methods.sae.model import SPLICE_MODES, SAEConfig, TopKSAE, densify
from hookedclip.methods.sae.pretrained import attribute_names, attribute_purity, class_tokens, shared_values, toy
from hookedclip.methods.sae.pretrained import from_pretrained as _from_pretrained
from hookedclip.methods.sae.readout import OutputHead, head_readout, output_head
from hookedclip.methods.sae.reference import fold_reference, from_reference, read_reference_state
from hookedclip.methods.sae.reliance import RelianceReport, class_relevance, label_alignment, unexpected_reliance
from hookedclip.methods.sae.splice import splice, splice_site
from hookedclip.methods.sae.train import TrainingDiverged, train
from hookedclip.methods.sae.train_config import TrainConfig
from hookedclip.methods.sae.train_log import TrainLog, cosine_loss

TopKSAE.from_reference = staticmethod(from_reference)
TopKSAE.from_pretrained = staticmethod(_from_pretrained)

__all__ = [
    "SPLICE_MODES",
    "Attribution",
    "Faithfulness",
    "OutputHead",
    "RelianceReport",
    "act_times_logit_lens",
    "attribute",
    "augmentation_checks",
    "augmented_embeddings",
    "class_relevance",
    "energy",
    "faithfulness",
    "head_readout",
    "label_alignment",
    "label_correlation",
    "latent_augmentation",
    "logit_lens",
    "mean_latent_attribution",
    "method_scores",
    "output_head",
    "random_active",
    "resample_values",
    "train_augmented_probe",
    "train_probe",
    "unexpected_reliance",
    "SAEConfig",
    "TopKSAE",
    "densify",
    "fold_reference",
    "from_reference",
    "read_reference_state",
    "splice",
    "splice_site",
    "TopActivations",
    "TopNAccumulator",
    "latent_statistic",
    "top_activations",
    "top_activations_from_store",
    *_labels_names,
    "TrainConfig",
    "TrainLog",
    "TrainingDiverged",
    "cosine_loss",
    "train",
    "attribute_names",
    "attribute_purity",
    "class_tokens",
    "shared_values",
    "toy",
]
