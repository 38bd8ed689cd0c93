"""Act×Grad attribution of a CLIP output to the latents of a spliced autoencoder.

``R_j(x, t) = a_j(x) · ∂y(x, t)/∂a_j(x)``: the activation times the gradient of the output
``y`` (the cosine to prompt ``t``, a logit or a class probability), taken with the autoencoder
spliced in (``"error_kept"``: the value of the forward pass is unchanged and the error
``ε = h − x̂`` is a constant). ``−R_j`` is the first-order estimate of what zeroing latent ``j``
does to ``y``; latents outside the top k get exactly 0. The error node gets
``R_ε = εᵀ ∂y/∂h'``.

Because ``ln_post`` removes the mean and the scale of the residual, a class-token autoencoder
right before it has ``Σ_j R_j + R_ε ≈ 0`` (not ``y``): attributions are directional, positive
for latents that turn the residual toward the output, balanced by negative ones.

Two computations, equal to each other:

* the general path (any layer, class token or patch tokens): the spliced model's forward with
  the code made a leaf; one backward per chunk of prompts, of the **sum** over (image, prompt)
  samples, so every image's gradient is its own;
* the closed form for a class-token autoencoder right before ``ln_post``: with the LayerNorm
  Jacobian ``J = ∂e/∂h`` at the image, each active latent's contribution vector
  ``c_j = a_j J d_j ∈ R^{d_out}`` is computed once, and for any number of prompts
  ``R_j = c_jᵀ (I − êêᵀ) ∂y/∂ê / ‖e‖``: one ``[k, d_out] × [d_out, n]`` product per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip import ablation
from hookedclip.identity import model_identity
from hookedclip.methods.sae.attribution_result import Attribution, AttributionPart, active_latents, check_labels
from hookedclip.methods.sae.model import TopKSAE
from hookedclip.methods.sae.readout import (
    Output,
    OutputHead,
    before_readout,
    check_reaches_output,
    head_readout,
    output_head,
)
from hookedclip.methods.sae.splice import splice as splice_context
from hookedclip.methods.sae.splice import splice_site

Method = Literal["auto", "closed_form", "autograd"]
ATTRIBUTION_SPLICES = ("error_kept", "recon_only")


def attribute(
    model,
    sae: TopKSAE,
    images: Float[Tensor, "batch channel height width"] | None = None,
    texts: Sequence[str] | None = None,
    text_embeddings: Float[Tensor, "n d_out"] | None = None,
    classifier=None,
    output: Output = "cosine",
    splice: str = "error_kept",
    labels: Sequence[str] | None = None,
    method: Method = "auto",
    residuals: Float[Tensor, "batch d_model"] | None = None,
    batch_size: int = 64,
    prompt_chunk: int = 16,
    text_model=None,
) -> Attribution:
    """Act×Grad attributions ``R [batch, n, d_sae]`` of each image's outputs to the latents.

    Args:
        images: model inputs ``[batch, C, H, W]``; or, for the closed form, ``residuals``: the
            class-token rows ``[batch, d_model]`` after the last block (cached; no ViT pass).
        texts / text_embeddings / classifier / output: what is differentiated (see
            :func:`~hookedclip.methods.sae.readout.output_head`); ``text_model`` is the model
            that embedded ``text_embeddings`` when it is known (it must be ``model``).
        splice: ``"error_kept"`` (the forward value is the model's own) or ``"recon_only"``
            (the error dropped; ``R_error`` is then 0).
        labels: one text label per latent (or ``None``), kept for tables and reports.
        method: ``"closed_form"`` (class-token autoencoder right before ``ln_post``),
            ``"autograd"`` (anywhere), or ``"auto"``: the closed form where it applies and no
            other intervention is active on the model.
        batch_size: images per forward pass; prompt_chunk: prompts per backward (general path).
    """
    if splice not in ATTRIBUTION_SPLICES:
        raise ValueError(
            f"splice must be one of {ATTRIBUTION_SPLICES} for an attribution, got {splice!r} "
            "('off' routes no gradient through the code)"
        )
    if method not in ("auto", "closed_form", "autograd"):
        raise ValueError(f"method must be 'auto', 'closed_form' or 'autograd', got {method!r}")
    splice_site(model, sae)
    sae.check_model(model)
    check_reaches_output(model, sae)
    labels = check_labels(labels, sae.d_sae)
    head = output_head(model, texts, text_embeddings, classifier, output, text_model)
    closed = method == "closed_form" or (method == "auto" and before_readout(model, sae) and not ablation.active(model))
    if closed and not before_readout(model, sae):
        raise ValueError(
            "the closed form needs a class-token autoencoder right before ln_post (layer -1, token 'cls'); "
            f"this one reads layer {sae.cfg.layer}, token {sae.cfg.token!r}: use method='autograd'"
        )
    if residuals is None and images is None:
        raise ValueError("give images (or, for the closed form, residuals=)")
    if residuals is not None and not closed:
        raise ValueError("residuals= feed the closed form only; give images for the general path")
    parts = []
    n = (residuals if residuals is not None else images).shape[0]
    for start in range(0, n, batch_size):
        if closed:
            h = (
                residuals[start : start + batch_size]
                if residuals is not None
                else cls_residual(model, sae, images[start : start + batch_size])
            )
            parts.append(closed_form(model, sae, h, head, splice))
        else:
            parts.append(autograd_path(model, sae, images[start : start + batch_size], head, splice, prompt_chunk))
    return Attribution.concat(
        parts,
        texts=head.names,
        labels=labels,
        output=output,
        splice=splice,
        method="closed_form" if closed else "autograd",
        d_sae=sae.d_sae,
        model=model_identity(model),
    )


@torch.no_grad()
def cls_residual(model, sae: TopKSAE, images: Tensor) -> Float[Tensor, "batch d_model"]:
    """The class-token row that ``sae`` reads, from one forward pass stopped after its block."""
    layer = sae.cfg.layer % model.cfg.n_layers
    return model.encode_image(images, stop_at_layer=layer + 1)[:, 0]


# ---------------------------------------------------------------------------- the closed form
def layer_norm_state(model, h: Float[Tensor, "batch d"]) -> tuple[Tensor, Tensor]:
    """``(u, σ)``: the standardised residual and its scale under ``ln_post``."""
    centred = h - h.mean(-1, keepdim=True)
    sigma = (centred.pow(2).mean(-1, keepdim=True) + model.visual.ln_post.eps).sqrt()
    return centred / sigma, sigma


def embedding_jacobian(
    model, u: Tensor, sigma: Tensor, vectors: Float[Tensor, "batch m d"]
) -> Float[Tensor, "batch m e"]:
    """``J v`` for each vector, with ``J = ∂e/∂h = Pᵀ diag(γ) (I − 11ᵀ/D − uuᵀ/D) / σ``."""
    d = vectors.shape[-1]
    along_u = (vectors @ u.unsqueeze(-1)) / d  # [batch, m, 1]
    v = vectors - vectors.mean(-1, keepdim=True) - along_u * u.unsqueeze(1)
    v = v * model.visual.ln_post.w.to(v) / sigma.unsqueeze(1)
    W = model.visual.W_proj
    return v if W is None else v @ W.to(v)


def output_gradients(
    head: OutputHead, e: Float[Tensor, "batch e"], contributions: Float[Tensor, "batch m e"]
) -> tuple[Float[Tensor, "batch m n"], Float[Tensor, "batch n"]]:
    """``(c_mᵀ ∂y_t/∂e, y)`` for every contribution vector ``c_m`` and output ``t``."""
    norm = e.norm(dim=-1, keepdim=True)
    unit = e / norm
    tangent = (contributions - (contributions @ unit.unsqueeze(-1)) * unit.unsqueeze(1)) / norm.unsqueeze(1)
    G = tangent @ head.W.to(e)  # [batch, m, n]
    y = head(e)
    if head.kind == "probability":  # ∂p_t/∂ê = p_t (w_t − Σ_c p_c w_c)
        G = y.unsqueeze(1) * (G - (G * y.unsqueeze(1)).sum(-1, keepdim=True))
    return G, y


def closed_form(model, sae: TopKSAE, h: Float[Tensor, "batch d"], head: OutputHead, splice: str = "error_kept"):
    """The attribution part of class-token rows ``h`` (before the splice); the contribution-vector form."""
    with torch.no_grad():
        h = h.to(sae.W_dec)
        values, indices = sae.select(sae.encode_pre(h))
        recons = sae.decode_sparse(values, indices)
        spliced = h if splice == "error_kept" else recons
        u, sigma = layer_norm_state(model, spliced)
        e = head_readout(model, spliced)
        atoms = sae.W_dec.T[indices]  # [batch, k, D]: only the active columns
        vectors = torch.cat([atoms, (h - recons).unsqueeze(1)], dim=1)
        contributions = embedding_jacobian(model, u, sigma, vectors)
        contributions[:, :-1] *= values.unsqueeze(-1)
        G, y = output_gradients(head.to(h), e, contributions)
        R = G[:, :-1].transpose(1, 2)  # [batch, n, k]
        R_error = G[:, -1] if splice == "error_kept" else torch.zeros_like(y)
        active = values != 0
        R = R * active.unsqueeze(1)  # a zero activation (topk_relu) is inactive: exactly 0
    return AttributionPart(R, indices, active, values, R_error, y)


# ---------------------------------------------------------------------------- the general path
def autograd_path(model, sae: TopKSAE, images: Tensor, head: OutputHead, splice: str, prompt_chunk: int = 16):
    """The attribution part of ``images`` by autograd through the spliced model; prompts in
    chunks of ``prompt_chunk``, each chunk one forward of ``batch × chunk`` samples and one backward
    of the sum of each sample's own output."""
    n_images, n_out = images.shape[0], len(head)
    head = head.to(sae.W_dec)
    columns = list(range(n_out))
    chunks = [columns[i : i + prompt_chunk] for i in range(0, n_out, prompt_chunk)]
    R_error = torch.zeros(n_images, n_out, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
    y = torch.zeros_like(R_error)
    R = latents = active = activations = None
    for chunk in chunks:
        c = len(chunk)
        saved: dict[str, Tensor] = {}
        with torch.enable_grad(), splice_context(model, sae, splice), sae.hooks(fwd_hooks=_leaf_hooks(saved)):
            e = model.encode_image(images.repeat(c, 1, 1, 1))  # sample i·batch + b: image b, prompt chunk[i]
            outputs = head(e).view(c, n_images, n_out)[torch.arange(c), :, chunk]  # [c, batch]
            grad_a, grad_h = torch.autograd.grad(outputs.sum(), [saved["acts"], saved["delta"]])
        a = saved["acts"].detach()

        if latents is None:  # the code is the same in every chunk
            code = a.view(c, n_images, *a.shape[1:])[0]  # [batch, tokens, H]
            latents, active = active_latents((code != 0).any(1))
            activations = code.sum(1).gather(-1, latents) * active
            R = torch.zeros(n_images, n_out, latents.shape[1], dtype=a.dtype, device=a.device)
        R[:, chunk] = _per_image(a * grad_a, c).gather(-1, latents.unsqueeze(1).expand(-1, c, -1)) * active.unsqueeze(1)
        if splice == "error_kept":
            R_error[:, chunk] = _per_image((saved["error"] * grad_h).sum(-1), c)
        y[:, chunk] = outputs.detach().T
    return AttributionPart(R, latents, active, activations, R_error, y)


def _per_image(x: Tensor, c: int) -> Tensor:
    """``[c·batch, tokens, ...] -> [batch, c, ...]``, summed over the tokens the autoencoder read."""
    return x.view(c, -1, *x.shape[1:]).sum(2).transpose(0, 1)


def _leaf_hooks(saved: dict[str, Tensor]) -> list:
    """The code as a leaf (its gradient is ``∂Y/∂a``), a zero added to the splice's output (its
    gradient is ``∂Y/∂h'``, for the error node) and the error, recorded."""

    def code_leaf(a, hook):
        saved["acts"] = a.detach().requires_grad_(True)
        return saved["acts"]

    def keep_error(err, hook):
        saved["error"] = err.detach()

    def output_probe(out, hook):
        saved["delta"] = torch.zeros_like(out, requires_grad=True)
        return out + saved["delta"]

    return [("hook_sae_acts_post", code_leaf), ("hook_sae_error", keep_error), ("hook_sae_output", output_probe)]


__all__ = ["ATTRIBUTION_SPLICES", "Attribution", "attribute", "closed_form", "autograd_path", "cls_residual"]
