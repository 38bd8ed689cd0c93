"""Text labels for latents: a latent's embedding from its top images, its alignment with a
concept vocabulary, and the clarity of its top images.

* Latent embedding: ``ϑ_j = (1/n) Σ_{i≤n} F(x_{j,(i)})``, the mean of the *unnormalised* image
  embeddings ``F`` of latent ``j``'s ``n`` top-activating images (default ``n = 20``), in any
  embedding model (by default the model itself).
* Alignment with a text ``t``: ``s_j(t) = cos(ϑ_j, T(t)) − cos(ϑ_j, T(""))``, where ``T`` is the
  embedding model's raw text embedding and ``T("")`` that of the empty string. Subtracting it
  removes the direction every text shares, so ``s_j("") = 0``; ``s ∈ [−2, 2]``. The label is
  ``argmax_t s_j(t)`` and the alignment ``max_t s_j(t)``.
* Clarity: the mean off-diagonal pairwise cosine of the ``n`` image embeddings,
  ``(‖mean_i ê_i‖² − 1/n) · n/(n − 1)`` with ``ê_i`` the unit embeddings: 1 when the images
  embed alike, ``−1/(n − 1)`` at least.

A latent that is clear (its top images alike) but aligned with no text of the vocabulary is a
*semantic outlier*: :meth:`LatentLabels.semantic_outliers` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip.identity import ModelIdentity, as_identity, model_label
from hookedclip.methods.sae.gallery import TopActivations
from hookedclip.results import Result, finish_figure, new_figure

ImageEmbedder = Callable[[Int[Tensor, " m"]], Float[Tensor, "m e"]]
DEFAULT_N = 20


# ---------------------------------------------------------------------------- pure functions
def alignment(
    theta: Float[Tensor, "h e"], texts: Float[Tensor, "l e"], empty: Float[Tensor, " e"], chunk: int = 4096
) -> Float[Tensor, "h l"]:
    """``s_j(t) = cos(ϑ_j, T(t)) − cos(ϑ_j, T(""))`` for every latent and text, computed as
    ``ϑ̂_j · (T̂(t) − T̂(""))`` (so a text embedding equal to ``T("")`` scores exactly 0) over the
    distinct text rows (so duplicate texts score exactly alike), ``chunk`` latents at a time."""
    if texts.shape[-1] != theta.shape[-1] or empty.shape[-1] != theta.shape[-1]:
        raise ValueError(
            f"latent embeddings of width {theta.shape[-1]}, text embeddings of width {texts.shape[-1]} and "
            f"{empty.shape[-1]}: embed images and texts with the same model"
        )
    directions = F.normalize(texts.float(), dim=-1) - F.normalize(empty.float(), dim=-1)
    unique, inverse = torch.unique(directions, dim=0, return_inverse=True)
    theta = F.normalize(theta.float(), dim=-1)
    out = [(theta[i : i + chunk] @ unique.T)[:, inverse] for i in range(0, len(theta), chunk)]
    return torch.cat(out).clamp(-2, 2) if out else theta.new_zeros(0, len(texts))


def clarity(embeddings: Float[Tensor, "*latents n e"]) -> Float[Tensor, "*latents"]:
    """The mean off-diagonal pairwise cosine of ``n >= 2`` embeddings,
    ``(‖mean ê‖² − 1/n) · n/(n − 1)``."""
    n = embeddings.shape[-2]
    if n < 2:
        raise ValueError(f"clarity needs at least 2 images per latent, got {n}")
    mean = F.normalize(embeddings.double(), dim=-1).mean(-2)
    return ((mean.pow(2).sum(-1) - 1 / n) * n / (n - 1)).float()


def latent_embeddings(
    indices: Int[Tensor, "n h"], embed: ImageEmbedder, chunk: int = 1024
) -> tuple[Float[Tensor, "h e"], Float[Tensor, " h"]]:
    """``(ϑ, clarity)`` of every latent from the sample indices of its top ``n`` images
    (``indices[:, j]``): each distinct image is embedded once (``embed(indices) -> [m, e]``)."""
    distinct = torch.unique(indices)
    table = embed(distinct).float()
    if len(table) != len(distinct):
        raise ValueError(f"the image embedder returned {len(table)} rows for {len(distinct)} images")
    thetas, clarities = [], []
    for start in range(0, indices.shape[1], chunk):
        rows = table[torch.searchsorted(distinct, indices[:, start : start + chunk].contiguous())]  # [n, c, e]
        thetas.append(rows.mean(0))
        clarities.append(clarity(rows.transpose(0, 1)))
    return torch.cat(thetas), torch.cat(clarities)


# ---------------------------------------------------------------------------- embedders
def model_image_embedder(model, images_of: Callable[[list[int]], Tensor], batch_size: int = 256) -> ImageEmbedder:
    """Raw image embeddings (``model.encode_image``, not normalised) of the samples with the
    given dataset indices; ``images_of(indices)`` returns their model inputs ``[m, 3, H, W]``."""

    @torch.no_grad()
    def embed(indices: Tensor) -> Tensor:
        index = indices.tolist()
        parts = [
            model.encode_image(images_of(index[i : i + batch_size]).to(model.device, model.dtype)).float().cpu()
            for i in range(0, len(index), batch_size)
        ]
        return torch.cat(parts)

    return embed


def toy_image_inputs(world, model) -> Callable[[list[int]], Tensor]:
    """The model inputs of toy-world images, re-rendered from their indices."""
    from hookedclip.toy.model import images_to_tensor

    return lambda index: images_to_tensor(world.images(index), tuple(model.cfg.image_mean), tuple(model.cfg.image_std))


def dataset_image_inputs(dataset, model) -> Callable[[list[int]], Tensor]:
    """The model inputs of a dataset's items (``item["image"]``: PIL, uint8 ``[H, W, 3]`` or a
    preprocessed tensor), through ``model.preprocess``."""
    import numpy as np
    from PIL import Image

    def one(i: int) -> Tensor:
        image = dataset[i]["image"]
        if isinstance(image, Tensor):
            return image
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if model.preprocess is None:
            raise ValueError("the embedding model has no preprocessing: pass preprocessed image tensors")
        return model.preprocess(image.convert("RGB"))

    return lambda index: torch.stack([one(i) for i in index])


def text_side(model, concepts: Sequence[str], cache_dir=None) -> tuple[Float[Tensor, "l e"], Float[Tensor, " e"]]:
    """Raw text embeddings ``T(t)`` of ``concepts`` (the string itself as the prompt) and
    ``T("")``, cached per model and concept list (:func:`hookedclip.data.vocab.text_embeddings`)."""
    from hookedclip.data.vocab import text_embeddings

    if not concepts:
        raise ValueError("the concept vocabulary is empty: give at least one text")
    emb = text_embeddings(model, [*concepts, ""], cache_dir=cache_dir, normalize=False)
    return emb[:-1], emb[-1]


# ---------------------------------------------------------------------------- the choice
@dataclass
class LabelChoice:
    """Each latent's label and runner-up among ``concepts``: ``label[j]`` and ``runner_up[j]``
    index ``concepts``; ``score[j]`` and ``runner_up_score[j]`` are their alignments ``s_j(t)``."""

    concepts: list[str]
    label: Int[Tensor, " h"]
    score: Float[Tensor, " h"]
    runner_up: Int[Tensor, " h"]
    runner_up_score: Float[Tensor, " h"]

    @classmethod
    def best_two(cls, scores: Float[Tensor, "h l"], concepts: Sequence[str]) -> LabelChoice:
        """The label (the first concept with the largest score) and the runner-up (the best
        concept whose text differs from the label's; the label itself when there is none)."""
        label = scores.argmax(1)  # the first of equal maxima
        ids = {text: i for i, text in reversed(list(enumerate(concepts)))}
        text_id = torch.tensor([ids[t] for t in concepts], device=scores.device)
        same_text = text_id[None, :] == text_id[label][:, None]
        others = scores.masked_fill(same_text, float("-inf"))
        runner_up = torch.where(same_text.all(1), label, others.argmax(1))
        return cls(list(concepts), label, _score_of(scores, label), runner_up, _score_of(scores, runner_up))

    def __len__(self) -> int:
        return len(self.label)

    def label_of(self, latent: int) -> str:
        return self.concepts[int(self.label[latent])]

    def runner_up_of(self, latent: int) -> str:
        return self.concepts[int(self.runner_up[latent])]


def _score_of(scores: Float[Tensor, "h l"], chosen: Int[Tensor, " h"]) -> Float[Tensor, " h"]:
    return scores.gather(1, chosen[:, None])[:, 0]


# ---------------------------------------------------------------------------- the result
@dataclass(repr=False)
class LatentLabels(Result, LabelChoice):
    """Labels of every latent (module docstring): the :class:`LabelChoice` (``concepts``,
    ``label``, ``score``, ``runner_up``, ``runner_up_score``) and the evidence behind it.

    Per latent ``j``: ``clarity[j]``; ``mean_activation[j]`` (of its top ``n`` samples) and
    ``mean_activation_all[j]`` (of all kept ones); its top ``n`` samples ``top_indices [n, h]``
    and statistics ``top_values [n, h]``. ``settings``: ``n``, the embedding model, the
    autoencoder's layer, token and pooling.
    """

    clarity: Float[Tensor, " h"]
    mean_activation: Float[Tensor, " h"]
    mean_activation_all: Float[Tensor, " h"]
    top_values: Float[Tensor, "n h"]
    top_indices: Int[Tensor, "n h"]
    settings: dict = field(default_factory=dict)
    model: ModelIdentity | None = None

    _kind: ClassVar[str] = "sae_labels"
    _tensor_fields: ClassVar[tuple[str, ...]] = (
        "label",
        "score",
        "runner_up",
        "runner_up_score",
        "clarity",
        "mean_activation",
        "mean_activation_all",
        "top_values",
        "top_indices",
    )
    _json_fields: ClassVar[tuple[str, ...]] = ("concepts", "settings")

    def __post_init__(self) -> None:
        self.model = as_identity(self.model)  # a model or its identity

    # ---- choosing latents
    def candidates(
        self, min_activation: float = 0.0, min_clarity: float | None = None, max_clarity: float | None = None
    ) -> Int[Tensor, " m"]:
        """Latents whose mean top-``n`` and mean kept activations exceed ``min_activation`` (so
        dead latents are out) and whose clarity lies strictly between the bounds given."""
        keep = (self.mean_activation > min_activation) & (self.mean_activation_all > min_activation)
        if min_clarity is not None:
            keep &= self.clarity > min_clarity
        if max_clarity is not None:
            keep &= self.clarity < max_clarity
        return keep.nonzero().flatten()

    def ranked(
        self,
        order: Literal["most", "least"] = "most",
        k: int = 6,
        min_activation: float = 0.0,
        min_clarity: float | None = None,
        max_clarity: float | None = None,
    ) -> Int[Tensor, " k"]:
        """The ``k`` candidate latents (:meth:`candidates`) with the highest (``"most"``) or
        lowest (``"least"``) alignment ``max_t s_j(t)``, in that order."""
        if order not in ("most", "least"):
            raise ValueError(f"order must be 'most' or 'least', got {order!r}")
        pool = self.candidates(min_activation, min_clarity, max_clarity)
        by_score = self.score[pool].argsort(descending=order == "most", stable=True)
        return pool[by_score[:k]]

    def most_aligned(self, k: int = 6, **filters) -> Int[Tensor, " k"]:
        return self.ranked("most", k, **filters)

    def least_aligned(self, k: int = 6, **filters) -> Int[Tensor, " k"]:
        return self.ranked("least", k, **filters)

    def semantic_outliers(
        self, k: int = 6, min_clarity: float = 0.4, max_clarity: float = 1.0, min_activation: float = 0.0
    ) -> Int[Tensor, " k"]:
        """Clear latents (``min_clarity < clarity < max_clarity``) that the vocabulary
        describes worst: the least aligned among them."""
        return self.ranked("least", k, min_activation, min_clarity, max_clarity)

    # ---- printing
    def _title(self) -> str:
        s = self.settings
        return (
            f"Labels of {len(self)} latents (layer {s.get('layer')}, {s.get('token')}; top {s.get('n')} images "
            f"embedded by {s.get('embedder')}; {len(self.concepts)} concepts) of {model_label(self.model)}"
        )

    def _rows(self, latents: Sequence[int]) -> list[list]:
        return [
            [
                j,
                self.label_of(j),
                f"{float(self.score[j]):.4f}",
                self.runner_up_of(j),
                f"{float(self.runner_up_score[j]):.4f}",
                f"{float(self.clarity[j]):.3f}",
                f"{float(self.mean_activation[j]):.4g}",
                " ".join(map(str, self.top_indices[:, j].tolist())),
            ]
            for j in latents
        ]

    def _table(self) -> tuple[list[str], list[list]]:
        header = ["latent", "label", "score", "runner-up", "runner-up score", "clarity", "mean activation"]
        return [*header, "top indices"], self._rows(range(len(self)))

    def _repr_sizes(self) -> dict:
        return {"latents": len(self), "concepts": len(self.concepts), "n": self.top_indices.shape[0]}

    def plot(self, path=None, min_clarity: float = 0.4):
        """Alignment against clarity, one dot per live latent; the semantic outliers circled."""
        live = self.candidates()
        fig, ax = new_figure(6, 4.2)
        ax.scatter(self.clarity[live], self.score[live], s=10, alpha=0.6, label="latents")
        outliers = self.semantic_outliers(min_clarity=min_clarity)
        ax.scatter(
            self.clarity[outliers],
            self.score[outliers],
            s=60,
            facecolors="none",
            edgecolors="C3",
            label=f"semantic outliers (clarity > {min_clarity:g}, least aligned)",
        )
        ax.axvline(min_clarity, color="0.6", lw=0.8, ls="--")
        ax.set_xlabel("clarity (mean pairwise cosine of the top images)")
        ax.set_ylabel('alignment max_t [cos(ϑ, T(t)) − cos(ϑ, T(""))]')
        ax.legend(fontsize=8, loc="best")
        return finish_figure(fig, path)


# ---------------------------------------------------------------------------- labelling
def label_latents(
    top: TopActivations,
    embed: ImageEmbedder,
    texts: Float[Tensor, "l e"],
    empty: Float[Tensor, " e"],
    concepts: Sequence[str],
    n: int = DEFAULT_N,
    embedder: str = "",
) -> LatentLabels:
    """Label every latent of ``top`` from its top ``n`` samples: ``embed(indices)`` gives their
    raw image embeddings, ``texts`` ``[l, e]`` and ``empty`` ``[e]`` the raw text embeddings of
    ``concepts`` and of the empty string (:func:`text_side`)."""
    if len(concepts) != len(texts):
        raise ValueError(f"{len(concepts)} concepts but {len(texts)} text embeddings")
    if n < 2:
        raise ValueError(f"n = {n}: a latent's embedding and clarity need at least 2 top images")
    n = min(n, top.n)
    if n < 2:
        raise ValueError(f"the top activations keep {top.n} sample(s) per latent; need at least 2")
    values, indices = top.values[:n], top.indices[:n]
    theta, clear = latent_embeddings(indices, embed)
    choice = LabelChoice.best_two(alignment(theta, texts, empty), concepts)
    settings = {**{k: top.settings.get(k) for k in ("layer", "token", "pool", "samples")}, "n": n, "embedder": embedder}
    return LatentLabels(
        **{f.name: getattr(choice, f.name) for f in fields(LabelChoice)},
        clarity=clear,
        mean_activation=values.mean(0),
        mean_activation_all=top.mean_top(),
        top_values=values.clone(),
        top_indices=indices.clone(),
        settings=settings,
        model=top.model,
    )


def label_with_model(
    top: TopActivations,
    model,
    images_of: Callable[[list[int]], Tensor],
    concepts: Sequence[str],
    n: int = DEFAULT_N,
    embed_model=None,
    cache_dir=None,
) -> LatentLabels:
    """:func:`label_latents` with images and texts embedded by ``embed_model`` (default: the
    model itself). ``images_of(indices)``: the embedding model's inputs of those samples
    (:func:`toy_image_inputs`, :func:`dataset_image_inputs`). ``model``: the model ``top`` was
    collected on (checked when ``top`` records one)."""
    if top.model is not None:
        top.check_model(model)
    embed_model = model if embed_model is None else embed_model
    texts, empty = text_side(embed_model, concepts, cache_dir=cache_dir)
    name = "the model itself" if embed_model is model else str(as_identity(embed_model))
    return label_latents(top, model_image_embedder(embed_model, images_of), texts, empty, concepts, n, name)


__all__ = [
    "DEFAULT_N",
    "LabelChoice",
    "LatentLabels",
    "alignment",
    "clarity",
    "dataset_image_inputs",
    "label_latents",
    "label_with_model",
    "latent_embeddings",
    "model_image_embedder",
    "text_side",
    "toy_image_inputs",
]
