"""What an attribution differentiates, and where the autoencoder sits relative to it.

* :class:`OutputHead`: the scalar outputs ``y [batch, n_outputs]`` read from an image embedding
  ``e``: the cosine to each prompt, a linear logit ``w_tᵀê + b_t`` (CLIP's scaled cosine, a
  zero-shot classifier or a linear probe on the unit embedding), or the softmax probability of
  each class among the outputs.
* :func:`head_readout`: the class-token residual after the last block to the image embedding,
  ``e = Pᵀ LN(h) + b_proj`` (``ln_post``, class-token pooling, the projection), as plain tensor
  algebra that fires no hook, so cached residuals are read out without the ViT.
* :func:`check_reaches_output` refuses an autoencoder the embedding cannot depend on (patch
  tokens after the last block of a class-token-pooled ViT), and :func:`before_readout` says when
  the autoencoder reads exactly what :func:`head_readout` takes (the closed form applies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hookedclip.identity import check_same_model

Output = Literal["cosine", "logit", "probability"]
OUTPUTS = ("cosine", "logit", "probability")


@dataclass
class OutputHead:
    """``y = φ(ê)`` with ``ê = e/‖e‖`` and logits ``L = ê W + b``.

    ``W [d_out, n]`` holds one column per output (unit prompt embeddings for ``"cosine"``),
    ``b [n]`` the biases; ``kind`` is ``"cosine"`` (``y = L``, unit columns, no bias),
    ``"logit"`` (``y = L``) or ``"probability"`` (``y = softmax(L)``); ``names`` one per column.
    """

    kind: Output
    W: Float[Tensor, "d_out n"]
    b: Float[Tensor, " n"]
    names: list[str]

    def __call__(self, e: Float[Tensor, "*batch d_out"]) -> Float[Tensor, "*batch n"]:
        logits = F.normalize(e, dim=-1) @ self.W.to(e) + self.b.to(e)
        return logits.softmax(-1) if self.kind == "probability" else logits

    def to(self, like: Tensor) -> OutputHead:
        return OutputHead(self.kind, self.W.to(like), self.b.to(like), self.names)

    def __len__(self) -> int:
        return self.W.shape[1]


def output_head(
    model,
    texts: Sequence[str] | None = None,
    text_embeddings: Tensor | None = None,
    classifier=None,
    output: Output = "cosine",
    text_model=None,
) -> OutputHead:
    """The :class:`OutputHead` for prompts (``texts``, embedded with ``model``, or their
    ``text_embeddings [n, d_out]``, rescaled to unit rows) or a ``classifier`` on the unit image
    embedding: a :class:`~hookedclip.zeroshot.ZeroShotClassifier` (``weights [d_out, n]``), an
    ``nn.Linear(d_out, n)`` or a pair ``(W [d_out, n], b [n])``.

    ``"logit"`` for prompts is CLIP's ``logit_scale.exp() · cos``; ``"cosine"`` for a classifier
    uses its unit columns. ``text_model``: the model (or its identity) that embedded
    ``text_embeddings``; it must be ``model``.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if classifier is not None and (texts is not None or text_embeddings is not None):
        raise ValueError("give prompts (texts / text_embeddings) or a classifier, not both")
    if classifier is None and texts is None and text_embeddings is None:
        raise ValueError(
            "nothing to attribute to: pass texts=, text_embeddings= (with texts= to name them) or classifier="
        )
    d_out = _embedding_width(model)
    if classifier is not None:
        W, b, names = _classifier_columns(classifier, d_out)
        if output == "cosine":
            W, b = F.normalize(W, dim=0), torch.zeros_like(b)
        return OutputHead(output, W, b, names)
    if text_embeddings is None:
        if not texts:
            raise ValueError("texts is empty: give at least one prompt")
        from hookedclip.zeroshot import embed_texts

        text_embeddings = embed_texts(model, list(texts))
    elif text_model is not None:
        check_same_model(_identity(text_model), model, "these text embeddings")
    _check_text_embeddings(text_embeddings, d_out)
    names = list(texts) if texts is not None else [f"text {i}" for i in range(text_embeddings.shape[0])]
    if len(names) != text_embeddings.shape[0]:
        raise ValueError(f"{len(names)} texts but {text_embeddings.shape[0]} text_embeddings rows: one row per text")
    W = F.normalize(text_embeddings.detach(), dim=-1).T
    if output == "logit":
        W = W * model.logit_scale.detach().exp().to(W)
    return OutputHead(output, W, torch.zeros(W.shape[1], dtype=W.dtype, device=W.device), names)


def _identity(model_or_identity):
    from hookedclip.identity import as_identity

    return as_identity(model_or_identity)


def _embedding_width(model) -> int:
    visual = model.visual
    return visual.W_proj.shape[1] if visual.W_proj is not None else visual.cfg.width


def _check_text_embeddings(text_embeddings: Tensor, d_out: int) -> None:
    if not isinstance(text_embeddings, Tensor) or text_embeddings.ndim != 2:
        got = tuple(text_embeddings.shape) if isinstance(text_embeddings, Tensor) else type(text_embeddings).__name__
        raise ValueError(f"text_embeddings must be a [n_texts, {d_out}] tensor, got {got}")
    if text_embeddings.shape[1] != d_out:
        raise ValueError(
            f"text_embeddings have width {text_embeddings.shape[1]}, this model's image embeddings have width "
            f"{d_out}: they were embedded by another model; embed the texts with this one (pass texts=)"
        )


def _classifier_columns(classifier, d_out: int) -> tuple[Tensor, Tensor, list[str]]:
    if isinstance(classifier, nn.Linear):
        W, b = classifier.weight.detach().T, classifier.bias
        b = b.detach() if b is not None else torch.zeros(W.shape[1], dtype=W.dtype)
        names = [f"class {i}" for i in range(W.shape[1])]
    elif isinstance(classifier, tuple) and len(classifier) == 2:
        W, b = (torch.as_tensor(v) for v in classifier)
        names = [f"class {i}" for i in range(W.shape[1])]
    elif hasattr(classifier, "weights"):
        W = classifier.weights.detach()
        b = torch.zeros(W.shape[1], dtype=W.dtype, device=W.device)
        names = list(getattr(classifier, "classnames", [f"class {i}" for i in range(W.shape[1])]))
    else:
        raise TypeError(
            "classifier must be a ZeroShotClassifier, an nn.Linear(d_out, n_classes) or a pair (W [d_out, n], b [n]), "
            f"got {type(classifier).__name__}"
        )
    if W.ndim != 2 or W.shape[0] != d_out or b.shape != (W.shape[1],):
        raise ValueError(
            f"the classifier's weights are {tuple(W.shape)} (bias {tuple(b.shape)}), this model's embeddings have "
            f"width {d_out}: expected [{d_out}, n_classes] and [n_classes]"
        )
    return W, b, names


# ---------------------------------------------------------------------------- the readout
def head_readout(model, h: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_out"]:
    """``e = Pᵀ ln_post(h) + b_proj`` for class-token residuals ``h`` after the last block."""
    ln = model.visual.ln_post
    n = F.layer_norm(h, (h.shape[-1],), ln.w.to(h), ln.b.to(h), ln.eps)
    W, b = model.visual.W_proj, model.visual.b_proj
    return n if W is None else n @ W.to(h) + b.to(h)


def _last_block(model, sae) -> bool:
    n_layers = model.cfg.n_layers
    return sae.cfg.layer is not None and sae.cfg.layer % n_layers == n_layers - 1


def check_reaches_output(model, sae) -> None:
    """Raise when the image embedding cannot depend on what ``sae`` reads: after the last block
    only the tokens the pooling keeps reach the embedding."""
    if not _last_block(model, sae):
        return
    vision = model.cfg.vision
    pooled_tok = vision.pool_type == "tok"
    if sae.cfg.token == "spatial" and pooled_tok:
        raise ValueError(
            "this autoencoder reads the patch tokens after the last block, which the model discards "
            "(it pools the class token): the embedding cannot depend on them and every attribution "
            "would be 0; attribute with a class-token autoencoder or one at an earlier layer"
        )
    if sae.cfg.token == "cls" and not pooled_tok:
        raise ValueError(
            "this autoencoder reads the class token after the last block, which the model discards "
            f"(it pools with {vision.pool_type!r} over the patch tokens): every attribution would be 0; "
            "attribute with a spatial autoencoder or one at an earlier layer"
        )


def before_readout(model, sae) -> bool:
    """Whether ``sae`` reads the class token right before ``ln_post`` of a class-token-pooled
    ViT, so that :func:`head_readout` is everything between it and the embedding."""
    vision = model.cfg.vision
    return (
        _last_block(model, sae)
        and sae.cfg.token == "cls"
        and vision.pool_type == "tok"
        and bool(getattr(vision, "class_token", True))
    )


def require_before_readout(model, sae, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless :func:`before_readout` holds (the closed form
    and the cached-residual paths need it)."""
    if not before_readout(model, sae):
        raise ValueError(
            f"{what} needs a class-token autoencoder right before ln_post (layer -1, token 'cls', a "
            f"class-token-pooled model); this one reads layer {sae.cfg.layer}, token {sae.cfg.token!r}"
        )


__all__ = [
    "OUTPUTS",
    "OutputHead",
    "before_readout",
    "check_reaches_output",
    "head_readout",
    "output_head",
    "require_before_readout",
]
