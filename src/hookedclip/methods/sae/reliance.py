"""Unexpected reliance: latents a class's prediction leans on whose label does not fit the class.

For each class ``c`` with prompt ``t_c`` and its images ``X_c``:

1. the mean attribution ``R̄_j(c) = mean_{x ∈ X_c} R_j(x, t_c)`` and the share of positive
   relevance ``ρ_j(c) = R̄_j(c) / Σ_i max(R̄_i(c), 0)``;
2. latent ``j`` is **relevant** when ``ρ_j(c) ≥ min_share``;
3. it is **unexpected** when its label's alignment ``s_j(c)`` with the class is low: below
   ``max_alignment`` (the absolute test), or with a z-score
   ``z_j(c) = (s_j(c) − mean_{c'} s_j(c')) / std_{c'} s_j(c')`` below ``max_z`` (the latent is
   not especially aligned with *this* class among all of them); ``test`` says which must hold;
4. flagged pairs are sub-categorised by lexical overlap: a label sharing a word with the class
   name (``"lexical"``: another sense of the word, a compound noun) or none (``"unrelated"``: a
   spurious correlation, an artefact of the data).

Every threshold is a parameter; the defaults are starting points, not calibrated values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hookedclip.identity import ModelIdentity, model_label
from hookedclip.methods.sae.attribution_result import Attribution
from hookedclip.results import Result

Test = Literal["absolute", "z", "either", "both"]
STOPWORDS = frozenset("a an the of on in with and or to for by at from photo image picture shape background".split())


@dataclass(repr=False)
class RelianceReport(Result):
    """The flagged ``(class, latent)`` pairs, one dict each in ``pairs`` (``class``, ``latent``,
    ``label``, ``share``, ``mean_R``, ``alignment``, ``z``, ``category``, ``images``: indices of the
    class's images where the latent's attribution is largest, ``references``: the latent's
    reference images when given) and the thresholds used (``settings``)."""

    _kind = "sae_reliance"
    _json_fields = ("pairs", "classes", "settings")

    pairs: list[dict]
    classes: list[str]
    settings: dict
    model: ModelIdentity | None = None

    def _title(self) -> str:
        return f"Unexpected reliance on {model_label(self.model)}: {len(self.pairs)} flagged (class, latent) pairs"

    def _table(self) -> tuple[list[str], list[list]]:
        header = ["class", "latent", "label", "share", "mean_R", "alignment", "z", "category", "images", "references"]
        rows = [[p[h] if not isinstance(p[h], list) else " ".join(map(str, p[h])) for h in header] for p in self.pairs]
        return header, rows

    def _repr_sizes(self) -> dict:
        return {"pairs": len(self.pairs), "classes": len(self.classes)}

    def flagged(self, cls: str | None = None) -> list[tuple[str, int]]:
        """``(class, latent)`` of every flagged pair (of one class when given)."""
        return [(p["class"], p["latent"]) for p in self.pairs if cls is None or p["class"] == cls]


def words(text: str) -> set[str]:
    """Lower-case content words of a label or a class name (template and filler words dropped)."""
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS}


def label_alignment(
    label_embeddings: Float[Tensor, "d_sae e"], class_embeddings: Float[Tensor, "n_classes e"]
) -> Float[Tensor, "d_sae n_classes"]:
    """Cosine between each latent label's text embedding and each class's."""
    return F.normalize(label_embeddings.double(), dim=-1) @ F.normalize(class_embeddings.double(), dim=-1).T


def class_relevance(attribution: Attribution, classes: Sequence[int]) -> Float[Tensor, "n_classes d_sae"]:
    """``R̄ [n_classes, d_sae]``: each class's mean attribution over its images, to its own
    output (image ``b`` of class ``classes[b]`` contributes ``R[b, classes[b]]``)."""
    classes = torch.as_tensor(classes, dtype=torch.long)
    n_out = len(attribution.texts)
    if classes.shape != (attribution.n_images,):
        raise ValueError(f"classes must give one class per image ({attribution.n_images}), got {tuple(classes.shape)}")
    if attribution.n_images and (classes.min() < 0 or classes.max() >= n_out):
        raise ValueError(f"classes must index the attribution's {n_out} outputs (its texts are the class prompts)")
    R = attribution.R[torch.arange(attribution.n_images), classes].double()  # [images, d_sae]
    total = torch.zeros(n_out, R.shape[1], dtype=R.dtype).index_add_(0, classes, R)
    count = torch.bincount(classes, minlength=n_out).clamp_min(1).unsqueeze(-1)
    return total / count


def unexpected_reliance(
    attribution: Attribution,
    classes: Sequence[int],
    alignment: Float[Tensor, "d_sae n_classes"],
    labels: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    min_share: float = 0.1,
    max_alignment: float = 0.2,
    max_z: float = 0.0,
    test: Test = "either",
    n_images: int = 5,
    references: Sequence[Sequence[int]] | None = None,
) -> RelianceReport:
    """Flag the (class, latent) pairs a class relies on against its label (module docstring).

    Args:
        attribution: attributions to the class prompts (its ``texts``, one output per class).
        classes: each image's class (an index into those outputs).
        alignment: ``s [d_sae, n_classes]``, each latent label's alignment with each class
            (e.g. :func:`label_alignment` of label and prompt embeddings).
        labels: one label per latent (default: the attribution's). class_names: for the lexical
            test (default: the prompts).
        min_share: ``τ_rel``, the share of positive relevance that makes a latent relevant.
        max_alignment: ``τ_align``, the absolute test. max_z: ``τ_z``, the z-score test.
        test: which tests flag a pair: ``"absolute"``, ``"z"``, ``"either"`` or ``"both"``.
        n_images: how many of the class's images to list per pair (largest attribution first).
        references: each latent's reference images (e.g. its top-activating images), listed as given.
    """
    if test not in ("absolute", "z", "either", "both"):
        raise ValueError(f"test must be 'absolute', 'z', 'either' or 'both', got {test!r}")
    n_classes, d_sae = len(attribution.texts), attribution.d_sae
    labels = list(labels) if labels is not None else attribution.labels
    if labels is None or len(labels) != d_sae:
        raise ValueError(f"give one label per latent ({d_sae}): labels= or an attribution computed with labels")
    alignment = torch.as_tensor(alignment).double()
    if tuple(alignment.shape) != (d_sae, n_classes):
        raise ValueError(f"alignment must be [d_sae, n_classes] = [{d_sae}, {n_classes}], got {tuple(alignment.shape)}")
    names = list(class_names) if class_names is not None else list(attribution.texts)
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    relevance = class_relevance(attribution, classes)
    share = relevance / relevance.clamp_min(0).sum(-1, keepdim=True).clamp_min(torch.finfo(relevance.dtype).tiny)
    z = (alignment - alignment.mean(-1, keepdim=True)) / alignment.std(-1, keepdim=True).clamp_min(1e-12)
    low_abs, low_z = alignment.T < max_alignment, z.T < max_z  # [n_classes, d_sae]
    unexpected = {"absolute": low_abs, "z": low_z, "either": low_abs | low_z, "both": low_abs & low_z}[test]
    flagged = (share >= min_share) & unexpected
    classes_t = torch.as_tensor(classes, dtype=torch.long)
    R = attribution.R.double()
    pairs = []
    for c, j in flagged.nonzero().tolist():
        members = (classes_t == c).nonzero().squeeze(-1)
        strongest = members[R[members, c, j].argsort(descending=True)[:n_images]].tolist()
        overlap = words(labels[j]) & words(names[c])
        pairs.append(
            {
                "class": names[c],
                "latent": j,
                "label": labels[j],
                "share": float(share[c, j]),
                "mean_R": float(relevance[c, j]),
                "alignment": float(alignment[j, c]),
                "z": float(z[j, c]),
                "category": "lexical" if overlap else "unrelated",
                "images": strongest,
                "references": list(references[j]) if references is not None else [],
            }
        )
    pairs.sort(key=lambda p: (names.index(p["class"]), -p["share"]))
    settings = dict(min_share=min_share, max_alignment=max_alignment, max_z=max_z, test=test)
    return RelianceReport(pairs=pairs, classes=names, settings=settings, model=attribution.model)


__all__ = ["RelianceReport", "class_relevance", "label_alignment", "unexpected_reliance", "words"]
