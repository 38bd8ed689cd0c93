"""Editing heads along their singular vectors: as an engine context, or as new weights.

``multipliers`` maps ``(head, i)`` to ``m``: the ``i``-th singular value of that head's
(ln1-folded, centred) ``VO_h`` becomes ``m · σ_i``. ``m = 0`` removes the channel, ``m = -1``
reflects it, ``m = 1`` leaves it alone. Biases are never edited.

- :func:`edit` is a context of the intervention engine (total mode, at ``hook_result``): each
  edited head's per-token output ``x`` becomes ``x + Σ_i (m_i - 1) ((x - b_h) · v_i) v_i``, where
  ``b_h`` is the head's constant bias part (its value bias and ``ln1``'s bias through ``W_V W_O``)
  and ``v_i`` its write directions. Because ``(x - b_h) · v_i = σ_i · (attention-weighted x̂ · u_i)``,
  this is exactly the weight edit below, without copying the model.
- :func:`edited` returns a new model whose weights carry the edit: a copy with LayerNorms folded,
  writing weights centred and value biases moved into ``b_O`` (all function-preserving), then each
  edited head refactored as ``W_V = U diag(m ⊙ S)``, ``W_O = Vh``.

The two give the same embeddings (to float rounding); hook values inside the network differ by
multiples of the all-ones vector, which the LayerNorms remove.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Mapping

import torch
from torch import Tensor

from hookedclip import ablation
from hookedclip.components import Head, select
from hookedclip.methods.sith.svd import head_svd
from hookedclip.model.weights import process_weights

#: ``{(head, i): m}``; a head is a label (``"L3H1"``) or a :class:`~hookedclip.components.Head`.
Multipliers = Mapping[tuple, float]


def edit(model, multipliers: Multipliers) -> contextlib.AbstractContextManager:
    """A context in which each listed singular channel of a head is scaled by its multiplier
    (module docstring). Composes with every other engine context."""
    plan = _plan(model, multipliers)
    updates = {}
    for layer, heads in plan.items():
        svd = head_svd(model, layer)
        attn, ln1 = model.visual.blocks[layer].attn, model.visual.blocks[layer].ln1
        bias = torch.einsum("hd,hdm->hm", torch.einsum("m,hmd->hd", ln1.b, attn.W_V) + attn.b_V, attn.W_O).detach()
        for head, channels in heads.items():
            index = torch.tensor(sorted(channels))
            gain = torch.tensor([channels[i] - 1.0 for i in sorted(channels)], dtype=svd.Vh.dtype)
            updates[Head(layer, head)] = (bias[head], svd.Vh[head, index], gain)

    def replace(x: Tensor, component: Head) -> Tensor:  # x: [batch, pos, d_model], this head's output
        bias, directions, gain = (t.to(x) for t in updates[component])
        coordinates = (x - bias) @ directions.T
        return x + (coordinates * gain) @ directions

    return ablation.intervene(model, list(updates), replace, mode="total", head_space="result")


@torch.no_grad()
def edited(model, multipliers: Multipliers):
    """A new model with the edit in its weights (module docstring); ``model`` is not changed."""
    plan = _plan(model, multipliers)
    new = process_weights(copy.deepcopy(model), fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    for layer, heads in plan.items():
        svd = head_svd(new, layer)  # on the processed copy: the same channels as on the original
        attn = new.visual.blocks[layer].attn
        for head, channels in heads.items():
            gain = torch.ones_like(svd.S[head])
            for i, m in channels.items():
                gain[i] = m
            attn.W_V[head] = svd.U[head] * (svd.S[head] * gain)
            attn.W_O[head] = svd.Vh[head]
    return new


def _plan(model, multipliers: Multipliers) -> dict[int, dict[int, dict[int, float]]]:
    """``{layer: {head: {i: m}}}`` from ``{(head, i): m}``, every entry checked."""
    if not isinstance(multipliers, Mapping) or not multipliers:
        raise ValueError("multipliers must be a non-empty dict {(head, i): m}, e.g. {('L3H1', 0): 0.0}")
    plan: dict[int, dict[int, dict[int, float]]] = {}
    for key, m in multipliers.items():
        if not isinstance(key, tuple) or len(key) != 2:
            raise ValueError(f"each key must be (head, i), e.g. ('L3H1', 0); got {key!r}")
        label, i = key
        heads = select(model, label)
        if len(heads) != 1 or not isinstance(heads[0], Head):
            raise ValueError(f"{label!r} names {len(heads)} components; each key names one head, e.g. 'L3H1'")
        head = heads[0]
        d_head = model.visual.blocks[head.layer].attn.d_head
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < d_head:
            raise ValueError(f"singular vector index {i!r} of {head} is out of range 0..{d_head - 1}")
        if not isinstance(m, (int, float)) or not math.isfinite(m):
            raise ValueError(f"the multiplier of ({head}, {i}) must be a finite number, got {m!r}")
        plan.setdefault(head.layer, {}).setdefault(head.head, {})[i] = float(m)
    return plan
