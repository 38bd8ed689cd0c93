"""Residual-stream directions into the joint image-text space, where concepts can be compared.

A direction ``v [d_model]`` is read out as if it were the final residual state of an image:
``t = ln_post(v) @ W_proj + b_proj`` (the model's own affine ``ln_post``), then
``z = normalize(normalize(t) - μ_img)``. Subtracting ``μ_img``, the mean of the model's unit image
embeddings, removes the offset every image embedding shares (the "modality gap"), so ``z`` can be
compared with text embeddings centred on their own mean (:func:`~hookedclip.methods.sith.
prepare_dictionary`).

``ln_post`` has a bias, so the map is affine: ``-v`` does not map to ``-z``. Explain ``-v`` as a
separate direction when the other polarity matters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hookedclip.data.batches import iter_images


@torch.no_grad()
def image_mean(model, batches) -> Float[Tensor, " d_out"]:
    """The mean of the L2-normalised image embeddings of every image in ``batches`` (not
    re-normalised). The result depends on the images: use a broad, generic set."""
    total, count = None, 0
    for images in iter_images(batches, model):
        emb = F.normalize(model.encode_image(images).double(), dim=-1)
        total = emb.sum(0) if total is None else total + emb.sum(0)
        count += emb.shape[0]
    if count == 0:
        raise ValueError("batches held no images: the image mean needs at least one image")
    return (total / count).to(model.dtype)


def image_mean_from_store(store, model=None, key: str = "embedding") -> Float[Tensor, " d_out"]:
    """:func:`image_mean` from the image embeddings already in an
    :class:`~hookedclip.data.store.ActivationStore` (target ``key``), read shard by shard; with
    ``model``, a store extracted from another model is refused."""
    from hookedclip.identity import check_same_model

    if model is not None:
        check_same_model(store.model, model, f"the store at {store.path}")
    if key not in store.keys:
        raise KeyError(
            f"the store holds no {key!r} rows (it has {', '.join(store.keys)}): extract the image embeddings"
        )
    total, count = None, 0
    for shard in store.iter_shards([key]):
        emb = F.normalize(shard[key].double().reshape(len(shard[key]), -1), dim=-1)
        total = emb.sum(0) if total is None else total + emb.sum(0)
        count += emb.shape[0]
    if count == 0:
        raise ValueError(f"the store at {store.path} holds no rows")
    return (total / count).float()


_mean_of_images = image_mean  # to_joint's argument of the same name shadows it


@torch.no_grad()
def to_joint(
    model, vectors: Float[Tensor, "... d_model"], image_mean: Tensor | None = None, batches=None
) -> Float[Tensor, "... d_out"]:
    """Map residual-stream directions into the joint space, one unit vector each (module docstring).

    Args:
        model: a :class:`~hookedclip.HookedCLIP` with an image projection.
        vectors: ``[..., d_model]``, e.g. :attr:`HeadSVD.Vh` ``[head, r, d_model]``.
        image_mean: ``μ_img [d_out]`` to subtract; or give ``batches`` to compute it
            (:func:`image_mean`); neither: no mean is subtracted.

    Returns:
        ``z [..., d_out]``, unit norm.
    """
    visual = model.visual
    if visual.W_proj is None:
        raise ValueError("this model's image tower has no projection into a joint space (output_dim is None)")
    d_model, d_out = visual.W_proj.shape
    if not isinstance(vectors, Tensor) or vectors.shape[-1] != d_model:
        got = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise ValueError(f"vectors must be [..., d_model={d_model}] residual-stream directions, got {got}")
    if image_mean is not None and batches is not None:
        raise ValueError("give image_mean or batches (to compute it), not both")
    if batches is not None:
        image_mean = _mean_of_images(model, batches)
    if image_mean is not None and tuple(image_mean.shape) != (d_out,):
        raise ValueError(f"image_mean must be [d_out={d_out}], got {tuple(image_mean.shape)}")
    ln = visual.ln_post
    x = vectors.to(visual.W_proj.device, visual.W_proj.dtype)
    # functional, not ln(x): the model's hook points must not fire on these synthetic states
    t = F.layer_norm(x, (d_model,), ln.w, ln.b, ln.eps) @ visual.W_proj + visual.b_proj
    z = F.normalize(t, dim=-1)
    if image_mean is not None:
        z = F.normalize(z - image_mean.to(z), dim=-1)
    return z
