"""Reading the published TopK autoencoder checkpoints into plain weights.

The reference trains with weight normalisation: the encoder is ``W_enc[j] = g_j v_j / ‖v_j‖``
(per latent, trainable gains) and the decoder ``W_dec[:, j] = v_j / ‖v_j‖`` (per atom, gain fixed
at 1). Its files are a Lightning ``.ckpt`` whose ``"state_dict"`` is the autoencoder's own state
dict, or that state dict alone, in one of two key layouts:

* ``encoder.0.weight_g`` / ``encoder.0.weight_v`` / ``encoder.0.bias`` / ``decoder.weight_g`` /
  ``decoder.weight_v`` (``torch.nn.utils.weight_norm``);
* ``encoder.0.parametrizations.weight.original0`` (``g``) / ``…original1`` (``v``) and the same for
  ``decoder`` (``torch.nn.utils.parametrizations.weight_norm``).

A key prefix (``sae.``, ``model.``) is ignored. Folding gives ``W_enc [H, D]``, ``b_enc [H]`` and
``W_dec [D, H]`` that reproduce the weight-normalised module's pre-activations, code and
reconstruction.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from hookedclip.identity import as_identity
from hookedclip.methods.sae.model import SAEConfig, Token, TopKSAE

_LAYOUTS = {
    "weight_norm": ("weight_g", "weight_v"),
    "parametrizations": ("parametrizations.weight.original0", "parametrizations.weight.original1"),
}


def read_reference_state(path_or_state: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The autoencoder's state dict from a checkpoint file (``.ckpt``/``.pt``, with or without a
    ``"state_dict"`` entry) or from a state dict, with any key prefix before ``encoder.``/``decoder.`` removed."""
    if isinstance(path_or_state, (str, Path)):
        path = Path(path_or_state)
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
    else:
        state = path_or_state
    if "state_dict" in state:
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        for part in ("encoder.", "decoder."):
            if part in key:
                out[key[key.index(part) :]] = value
    if not out:
        raise KeyError(
            f"no encoder./decoder. weights in this checkpoint (keys: {list(state)[:8]}…): "
            "is it a TopK autoencoder checkpoint of the reference code?"
        )
    return out


def fold_reference(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{"W_enc", "b_enc", "W_dec"}`` from a reference state dict (either layout; see the module)."""
    layout = _layout(state)
    g_name, v_name = _LAYOUTS[layout]
    g_enc, v_enc = state[f"encoder.0.{g_name}"], state[f"encoder.0.{v_name}"]
    v_dec = state[f"decoder.{v_name}"]
    W_enc = g_enc.reshape(-1, 1) * v_enc / v_enc.norm(dim=1, keepdim=True)
    # The decoder's gain is frozen at 1 in the reference; a stored gain is applied all the same.
    g_dec = state.get(f"decoder.{g_name}", torch.ones(1, v_dec.shape[1], dtype=v_dec.dtype))
    W_dec = g_dec.reshape(1, -1) * v_dec / v_dec.norm(dim=0, keepdim=True)
    return {"W_enc": W_enc, "b_enc": state["encoder.0.bias"], "W_dec": W_dec}


def _layout(state: Mapping[str, Tensor]) -> str:
    for layout, (_, v_name) in _LAYOUTS.items():
        if f"encoder.0.{v_name}" in state and f"decoder.{v_name}" in state:
            return layout
    raise KeyError(
        "the checkpoint has neither weight-norm layout (encoder.0.weight_v / decoder.weight_v, or "
        f"encoder.0.parametrizations.weight.original1 / decoder.parametrizations.weight.original1); keys: {list(state)}"
    )


def from_reference(
    path_or_state_dict: str | Path | Mapping[str, Tensor],
    k: int,
    layer: int | None = None,
    token: Token = "cls",
    model=None,
) -> TopKSAE:
    """A :class:`TopKSAE` (activation ``"topk"``, as the reference) from a reference checkpoint.
    ``k`` is not stored in those files (64 in every published configuration); ``layer`` and
    ``token`` say where it reads; ``model`` records the model identity it belongs to."""
    weights = fold_reference(read_reference_state(path_or_state_dict))
    d_sae, d_in = weights["W_enc"].shape
    identity = None if model is None else as_identity(model)
    sae = TopKSAE(
        SAEConfig(d_in=d_in, d_sae=d_sae, k=k, activation="topk", layer=layer, token=token),
        model=identity,
        dtype=weights["W_enc"].dtype,
    )
    sae.load_state_dict(weights)
    return sae
