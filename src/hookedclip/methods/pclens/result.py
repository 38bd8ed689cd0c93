"""The PCLens result for all analysed heads: :class:`PCLensResult` (one :class:`HeadPCA` per head,
optionally one for the final embedding, the label vocabulary and the query means), saved and
loaded with the model's identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor
from typing_extensions import Unpack

from hookedclip._options import completed
from hookedclip.identity import ModelIdentity, model_label
from hookedclip.methods.pclens.head import HeadPCA
from hookedclip.methods.pclens.pca import LabelOptions, label_pcs
from hookedclip.plotting import colormap, finish_figure, new_figure
from hookedclip.results import Result

#: v2: the model is recorded by :func:`hookedclip.identity.model_identity` (v1 used another fingerprint).
FORMAT_VERSION = 2


@dataclass(repr=False)
class PCLensResult(Result):
    """PCA of every analysed head (and optionally of the final embedding), with labels.

    Attributes:
        heads: ``label -> HeadPCA`` for the analysed heads, in model order.
        embedding: the same analysis of the final unit embeddings ``ê`` (no PC cap), or None.
        model: :func:`~hookedclip.identity.model_identity` of the model the statistics came from.
        texts: the label vocabulary, or None.
        text_mean: ``μ_text [d']``, the mean of the pool's unit embeddings (centres text queries).
        image_mean: ``μ_images [d']``, the mean unit image embedding (centres image queries and
            gives the constant of ``mean_ablate_all``).
        settings: how it was fitted (threshold, energy, max_pcs, sign, n_texts, center_texts).
    """

    _kind = "pclens"
    _version = FORMAT_VERSION

    heads: dict[str, HeadPCA]
    model: ModelIdentity | None
    embedding: HeadPCA | None = None
    texts: list[str] | None = None
    text_mean: Float[Tensor, " d"] | None = None
    image_mean: Float[Tensor, " d"] | None = None
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = ModelIdentity.of(self.model)
        for pca in self._all():
            pca.model = pca.model or self.model

    # ---- access
    def __getitem__(self, label: str) -> HeadPCA:
        if label not in self.heads:
            known = ", ".join(self.heads) or "none"
            raise KeyError(f"{label!r} is not an analysed head of this PCLens result (analysed: {known})")
        return self.heads[label]

    def __iter__(self):
        return iter(self.heads.values())

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def n_pcs(self) -> int:
        return sum(h.k for h in self.heads.values())

    def pcs(self) -> list[tuple[str, int]]:
        """Every retained PC as ``(head label, index)``, heads in order."""
        return [(label, i) for label, h in self.heads.items() for i in range(h.k)]

    def label_with(
        self, text_embeddings: Float[Tensor, "m d"], texts: Sequence[str], **options: Unpack[LabelOptions]
    ) -> PCLensResult:
        """(Re)label every head and the embedding against a vocabulary with :func:`label_pcs`
        (its options and defaults); rebuilds each ``Π``."""
        options = completed(label_pcs, LabelOptions, options, "label_with")
        texts = list(texts)
        for pca in self._all():
            label_pcs(pca, text_embeddings, texts, **options)
        self.texts = texts
        self.text_mean = text_embeddings.to(torch.float64).mean(0).to(self._device())
        self.settings.update(options)
        return self

    def _all(self) -> list[HeadPCA]:
        return list(self.heads.values()) + ([self.embedding] if self.embedding is not None else [])

    def _device(self) -> torch.device:
        return next(iter(self._all())).mean.device

    # ---- the Result protocol
    def summary(self) -> str:
        """One line per head: k, the share of ΣS kept, and PC 0's labels when present."""
        lines = [f"PCLens on {model_label(self.model)}: {len(self)} heads, {self.n_pcs} PCs"]
        for pca in self._all():
            kept = float(pca.singular_values.sum()) / pca.total_singular if pca.total_singular > 0 else 0.0
            first = f"  PC0 {pca.label_of(0, 2).short()}" if pca.pos_idx is not None and pca.k else ""
            lines.append(f"  {pca.label:<10} k={pca.k:<3} ΣS kept {100 * kept:5.1f}%{first}")
        return "\n".join(lines)

    def _table(self) -> tuple[list[str], list[list]]:
        """One row per retained PC of every head, then of the embedding."""
        rows = [[pca.label, *row] for pca in self._all() for row in pca._table()[1]]
        return ["head", *HeadPCA._HEADER], rows

    def _repr_sizes(self) -> dict:
        return {
            "heads": len(self),
            "pcs": self.n_pcs,
            "d": self._all()[0].mean.shape[-1] if self._all() else 0,
            "texts": len(self.texts) if self.texts is not None else None,
            "embedding": self.embedding is not None,
        }

    def plot(
        self,
        path: str | Path | None = None,
        title: str | None = None,
        max_pcs: int | None = None,
        min_strength: float | None = None,
    ):
        """Relative strength (% of the head's retained variance) of each head's first ``max_pcs``
        PCs against the PC index, one line per head, log scale; ``min_strength`` (%) is drawn
        dashed (a ``Figure``; written to ``path`` when given)."""
        from matplotlib.ticker import MaxNLocator

        fig, ax = new_figure(7.0, 3.8)
        cmap = colormap("tab20")
        steps = 1
        for j, pca in enumerate(self.heads.values()):
            rel = [r for r in pca.strength_rel[:max_pcs].tolist() if r > 0]  # log scale: zeros have no place
            steps = max(steps, len(rel))
            ax.plot(
                range(len(rel)), rel, marker="o", markersize=2.5, linewidth=1.2, color=cmap(j % 20), label=pca.label
            )
        if min_strength:
            ax.axhline(min_strength, color="black", linestyle="--", linewidth=0.9, label=f"listed: ≥ {min_strength:g}%")
        ax.set_yscale("log")
        ax.set_xlabel("principal component (0 = strongest)")
        ax.set_ylabel("strength (% of retained variance)")
        ax.set_title(title or f"PCLens ({model_label(self.model)})", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(-0.5, steps - 0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 + len(self) // 17)
        return finish_figure(fig, path)

    # ---- persistence: one record per head in the JSON, tensors named "{label}.{name}"
    def _state(self) -> tuple[dict[str, Tensor | None], dict]:
        tensors: dict[str, Tensor | None] = {"text_mean": self.text_mean, "image_mean": self.image_mean}
        records = []
        for pca in self._all():
            records.append(
                {
                    "label": pca.label,
                    "n": pca.n,
                    "total_singular": pca.total_singular,
                    "labelled": pca.pos_idx is not None,
                }
            )
            tensors.update({f"{pca.label}.{name}": getattr(pca, name) for name in HeadPCA._tensor_fields})
        fields = {
            "settings": self.settings,
            "texts": self.texts,
            "heads": records,
            "has_embedding": self.embedding is not None,
        }
        return tensors, fields

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor | None], fields: dict, model: ModelIdentity | None) -> PCLensResult:
        texts = fields["texts"]
        pcas = [_head_from(record, tensors, texts) for record in fields["heads"]]
        embedding = pcas.pop() if fields["has_embedding"] else None
        return cls(
            {p.label: p for p in pcas},
            model,
            embedding,
            texts,
            tensors.get("text_mean"),
            tensors.get("image_mean"),
            fields["settings"],
        )

    @classmethod
    def _upgrade_hint(cls) -> str:
        return "v1 files recorded the model by a fingerprint this version no longer computes"

    def save(self, path: str | Path) -> Path:
        """Write ``pclens.safetensors`` (tensors) and ``pclens.json`` (everything else) in ``path``."""
        return super().save(path)

    @classmethod
    def load(cls, path: str | Path, model=None, device: str | torch.device = "cpu") -> PCLensResult:
        """Read a result written by :meth:`save`; with ``model``, refuse
        (:class:`~hookedclip.identity.ModelMismatch`) a model other than the one it was fitted on."""
        return super().load(path, model, device)


def _head_from(record: dict, tensors: dict[str, Tensor | None], texts: list[str] | None) -> HeadPCA:
    label = record["label"]
    get = lambda name: tensors.get(f"{label}.{name}")  # noqa: E731
    return HeadPCA(
        label,
        get("mean"),
        get("components"),
        get("singular_values"),
        get("projector"),
        record["n"],
        record["total_singular"],
        get("pos_idx"),
        get("pos_coef"),
        get("neg_idx"),
        get("neg_coef"),
        texts,
    )


__all__ = ["FORMAT_VERSION", "PCLensResult"]
