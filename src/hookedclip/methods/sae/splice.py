"""Splicing an autoencoder into the residual stream, as a context of the intervention engine.

Inside ``with sae.splice(model, sae):`` the residual stream after block ``L`` is replaced, at the
class token (``token="cls"``) or at every patch token (``"spatial"``), by what the autoencoder
writes back (:meth:`TopKSAE.forward`): ``"error_kept"`` leaves every value unchanged and routes
gradients through the code, ``"recon_only"`` drops the error, ``"off"`` only observes. The
rows are rebuilt with ``torch.cat`` rather than written in place, so no tensor autograd saved is
overwritten, and the splice nests with every other context (ablations, PCLens, SITH edits) by
the engine's rule: in hook order, inner after outer.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from hookedclip import ablation
from hookedclip.methods.sae.model import SPLICE_MODES, SpliceMode, TopKSAE
from hookedclip.names import act_name


def splice(model, sae: TopKSAE, mode: SpliceMode = "error_kept") -> contextlib.AbstractContextManager:
    """A context in which ``sae`` rewrites the residual stream it reads (module docstring).
    Raises before any work when the autoencoder was trained on another model, reads another
    width, or names a layer the model does not have."""
    if mode not in SPLICE_MODES:
        raise ValueError(f"mode must be one of {SPLICE_MODES}, got {mode!r}")
    site = splice_site(model, sae)
    sae.check_model(model)
    cls = sae.cfg.token == "cls"

    def replace(x: Tensor, site: str) -> Tensor:  # x: [batch, pos, d_model]
        if cls:
            return torch.cat([sae(x[:, :1], mode=mode), x[:, 1:]], dim=1)
        return torch.cat([x[:, :1], sae(x[:, 1:], mode=mode)], dim=1)

    return ablation.intervene_at(model, site, replace)


def splice_site(model, sae: TopKSAE) -> str:
    """The hook point ``sae`` reads on ``model`` (``visual.blocks.L.hook_resid_post``), checked."""
    n_layers, width = model.cfg.n_layers, model.cfg.d_model
    layer = sae.cfg.layer
    if layer is None:
        raise ValueError(
            "this autoencoder records no layer: build it with SAEConfig(layer=...) to say which "
            "block's residual stream it reads"
        )
    if not -n_layers <= layer < n_layers:
        raise IndexError(f"the autoencoder reads layer {layer}, out of range for a model with {n_layers} layers")
    if sae.d_in != width:
        raise ValueError(
            f"the autoencoder reads vectors of width {sae.d_in}, the model's residual stream has "
            f"width {width}: it was trained on another model"
        )
    return act_name("resid_post", layer, n_layers=n_layers)
