"""TransformerLens's residual-stream analyses on a cache, with CLIP's readout.

TransformerLens reads a residual stream out through ``ln_final`` and the unembedding. A CLIP
image tower reads it out through ``ln_post``, pooling (the class token, or the mean of the
patch tokens) and the projection ``P`` into the joint space; the "logit" of a class is the
embedding's dot product with a text embedding (or a zero-shot classifier's class direction).

Everything here works on ``[component, batch, (pos,) d_model]`` stacks of residual-stream
vectors taken from an :class:`~hookedclip.cache.ActivationCache`, and uses the same frozen
readout as :func:`hookedclip.decompose.decompose_image` (the final LayerNorm's scale from the
cache, each component centred on its own mean, ``ln_mode="center_each"``), so the direct
contribution of a component computed either way agrees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor
from typing_extensions import Unpack

from hookedclip._options import completed
from hookedclip.caching import PosSlice, slice_positions
from hookedclip.caching import position_index as _index
from hookedclip.decompose.residual_options import (  # noqa: F401 (importable from here too)
    RESID_DEFAULTS,
    AccumulatedOptions,
    BlockInputOptions,
    DecomposeOptions,
    FullDecompositionOptions,
    HeadStackOptions,
    NeuronStackOptions,
    ResidReadout,
    Stack,
)
from hookedclip.names import act_name

if TYPE_CHECKING:
    from hookedclip.cache import ActivationCache


def _tower(cache: ActivationCache, tower: str):
    if cache.model is None:
        raise ValueError("this analysis needs the model the cache came from (ActivationCache(..., model))")
    return getattr(cache.model, tower)


def _layers(cache: ActivationCache, layer: int | None, tower: str) -> int:
    """TransformerLens's ``layer`` argument: how many blocks to include (``None`` or -1: all)."""
    n = len(_tower(cache, tower).blocks)
    if layer is None or layer == -1:
        return n
    if not 0 <= layer <= n:
        raise ValueError(f"layer {layer} is out of range: the {tower} tower has {n} layers (0..{n})")
    return layer


def _scale_name(layer: int, mlp_input: bool, n_layers: int, tower: str) -> str:
    if layer == n_layers:
        if mlp_input:
            raise ValueError("mlp_input=True needs a block index below n_layers")
        return act_name("ln_post_scale" if tower == "visual" else "ln_final_scale", tower=tower)
    return act_name("ln2_scale" if mlp_input else "ln1_scale", layer, tower)


# ------------------------------------------------------------------ LayerNorm and readout
def apply_ln_to_stack(
    cache: ActivationCache,
    residual_stack: Float[Tensor, "component *batch_and_pos d_model"],
    layer: int | None = None,
    mlp_input: bool = False,
    pos_slice: PosSlice = None,
    batch_slice: slice | None = None,
    has_batch_dim: bool = True,
    tower: str = "visual",
) -> Float[Tensor, "component *batch_and_pos d_model"]:
    """Centre each component on its own mean over ``d_model`` and divide by the LayerNorm scale
    the cached forward used: ``ln1`` of block ``layer`` (``ln2`` with ``mlp_input``), or the final
    LayerNorm (``ln_post``) when ``layer`` is ``None`` / ``n_layers``. No ``w, b`` (TL's rule).

    Where ``ln_post`` follows the pooling (``final_ln_after_pool``), its scale belongs to the
    pooled vector: a stack with a token axis is pooled first (the axis goes).
    """
    n = len(_tower(cache, tower).blocks)
    layer = _layers(cache, layer, tower)
    scale = cache[_scale_name(layer, mlp_input, n, tower)]
    if batch_slice is not None:
        scale = scale[batch_slice]
    if not has_batch_dim:
        scale = scale[0]
    centred = residual_stack - residual_stack.mean(-1, keepdim=True)
    if layer == n and _pools_before_ln(cache, tower):
        if centred.ndim == scale.ndim + 2:  # [component, batch, pos, d] with a pooled scale
            centred = _pool(cache, centred, tower)
        return centred / scale
    scale = slice_positions(scale, pos_slice, -2)
    return centred / scale


def _pools_before_ln(cache: ActivationCache, tower: str) -> bool:
    return bool(getattr(_tower(cache, tower).cfg, "final_ln_after_pool", False))


def _pool_weights(cache: ActivationCache, n_pos: int, tower: str) -> Float[Tensor, " pos"]:
    """The image tower's pooling weights π over positions (one-hot CLS, or uniform patches)."""
    if tower != "visual":
        raise NotImplementedError("the text tower pools at each text's EOT token; slice that position yourself")
    from hookedclip.decompose import _pool_weights as pool_weights

    visual = _tower(cache, tower)
    x = torch.zeros(1, n_pos, 1)
    return pool_weights(visual, None, x)[0]


def _pool(cache, stack: Tensor, tower: str) -> Tensor:
    pi = _pool_weights(cache, stack.shape[-2], tower).to(stack)
    return torch.einsum("q,...qd->...d", pi, stack)


def residual_to_joint(
    cache: ActivationCache,
    residual_stack: Float[Tensor, "component batch *pos d_model"],
    pos_slice: PosSlice = None,
    batch_slice: slice | None = None,
    has_batch_dim: bool = True,
    tower: str = "visual",
) -> Float[Tensor, "component batch d_out"]:
    """Each residual-stream vector's direct contribution to the image embedding: the frozen
    final LayerNorm (:func:`apply_ln_to_stack`), pooling where the stack still has all token
    positions, then ``diag(γ) P``. A stack sliced to the class token (``pos_slice=0``) of a
    class-token model is read as that token."""
    if tower != "visual":
        raise NotImplementedError(
            "the text tower pools at each text's EOT token: slice that position and "
            "apply model.text.ln_final and W_proj yourself"
        )
    visual = _tower(cache, tower)
    normalised = apply_ln_to_stack(cache, residual_stack, None, False, pos_slice, batch_slice, has_batch_dim, tower)
    if normalised.ndim == 3 + int(has_batch_dim):  # a token axis is left: pool it
        if pos_slice is not None or normalised.shape[-2] != visual.cfg.n_tokens:
            raise ValueError(
                "a stack with a token axis must hold every position to be pooled; slice the pooled "
                "position (pos_slice=0 for the class token) or pass the whole stream"
            )
        normalised = _pool(cache, normalised, tower)
    return (normalised * visual.ln_post.w.detach()) @ visual.W_proj.detach()


def logit_attrs(
    cache: ActivationCache,
    residual_stack: Float[Tensor, "component batch *pos d_model"],
    directions: Float[Tensor, "*batch d_out"],
    incorrect: Float[Tensor, "*batch d_out"] | None = None,
    pos_slice: PosSlice = None,
    batch_slice: slice | None = None,
    has_batch_dim: bool = True,
) -> Float[Tensor, "component batch"]:
    """Direct attribution of a zero-shot score to each component: its joint-space contribution
    (:func:`residual_to_joint`) dotted with ``directions`` (a text embedding or a class
    direction ``[d_out]``, or one per image ``[batch, d_out]``); with ``incorrect``, the
    difference of the two scores (TL's logit difference)."""
    joint = residual_to_joint(cache, residual_stack, pos_slice, batch_slice, has_batch_dim)
    target = directions if incorrect is None else directions - incorrect
    return (joint * target.to(joint)).sum(-1)


def _completed(options, options_type: type, caller: str) -> dict:
    return completed(RESID_DEFAULTS, options_type, options, caller)


# ------------------------------------------------------------------ stacks of components
def _from_cache(cache, short: str, layer: int | None, tower: str, pos_slice: PosSlice, dim: int = -2) -> Tensor:
    return slice_positions(cache[short, layer, tower] if layer is not None else cache[short], pos_slice, dim)


def head_results(
    cache: ActivationCache, layer: int, pos_slice: PosSlice = None, tower: str = "visual"
) -> Float[Tensor, "batch *pos head d_model"]:
    """Each head's output before ``b_O`` (``hook_result``), from the cache or from ``z`` and ``W_O``."""
    name = act_name("result", layer, tower)
    if name in cache:
        return slice_positions(cache[name], pos_slice, -3)
    z = slice_positions(cache["z", layer, tower], pos_slice, -3)
    W_O = _tower(cache, tower).blocks[layer].attn.W_O
    return torch.einsum("...he,hem->...hm", z, W_O.to(z.dtype).detach())


def stack_head_results(
    cache: ActivationCache, layer: int | None = -1, **options: Unpack[HeadStackOptions]
) -> Stack | tuple[Stack, list[str]]:
    """Every head's output (before ``b_O``) in the blocks before ``layer`` (all with -1 / None),
    stacked: ``[layer * head, batch, *pos, d_model]``, labels ``"L0H0", ...``. Uses cached
    ``hook_result`` where present, else ``hook_z`` and ``W_O``.

    Options (keyword only): ``incl_remainder`` adds the residual stream entering ``layer``
    minus the heads (``"remainder"``); ``apply_ln`` the frozen LayerNorm of ``layer``;
    ``pos_slice=0`` keeps the class token only (small); ``return_labels``; ``tower``
    (:class:`HeadStackOptions`)."""
    options = _completed(options, HeadStackOptions, "stack_head_results")
    n = _layers(cache, layer, options["tower"])
    rows, labels = [], []
    for block in range(n):
        result = head_results(cache, block, options["pos_slice"], options["tower"])
        rows.append(result.movedim(-2, 0))
        labels += [f"L{block}H{h}" for h in range(result.shape[-2])]
    return _with_remainder(cache, torch.cat(rows) if rows else None, labels, n, options)


def neuron_results(
    cache: ActivationCache,
    layer: int,
    neuron_slice: PosSlice = None,
    pos_slice: PosSlice = None,
    tower: str = "visual",
) -> Float[Tensor, "batch *pos neuron d_model"]:
    """Block ``layer``'s MLP neurons' outputs ``post[..., n] * W_out[n]`` (before ``b_out``):
    ``[batch, *pos, neuron, d_model]``."""
    post = slice_positions(cache["post", layer, tower], pos_slice, -2)
    W_out = _tower(cache, tower).blocks[layer].mlp.W_out.detach()
    post, W_out = slice_positions(post, neuron_slice, -1), slice_positions(W_out, neuron_slice, 0)
    return post.unsqueeze(-1) * W_out.to(post.dtype)


def stack_neuron_results(
    cache: ActivationCache, layer: int | None = -1, **options: Unpack[NeuronStackOptions]
) -> Stack | tuple[Stack, list[str]]:
    """Every MLP neuron's output in the blocks before ``layer`` (all with -1 / None):
    ``[layer * neuron, batch, *pos, d_model]``, labels ``"L0N0", ...``. Large: pass
    ``neuron_slice`` on real models.

    Options (keyword only): ``neuron_slice`` keeps these neurons of each block;
    ``incl_remainder`` adds the residual stream entering ``layer`` minus the neurons
    (``"remainder"``); ``apply_ln``, ``pos_slice``, ``return_labels``, ``tower`` as for every
    stack (:class:`NeuronStackOptions`)."""
    options = _completed(options, NeuronStackOptions, "stack_neuron_results")
    neuron_slice, tower = options["neuron_slice"], options["tower"]
    n = _layers(cache, layer, tower)
    rows, labels = [], []
    kept = torch.arange(_tower(cache, tower).cfg.d_mlp)[_index(neuron_slice)].reshape(-1).tolist()
    for block in range(n):
        out = neuron_results(cache, block, neuron_slice, options["pos_slice"], tower)
        if isinstance(neuron_slice, int):
            out = out.unsqueeze(-2)
        rows.append(out.movedim(-2, 0))
        labels += [f"L{block}N{i}" for i in kept]
    return _with_remainder(cache, torch.cat(rows) if rows else None, labels, n, options)


def _resid_at(cache, layer: int, mlp_input: bool, tower: str, pos_slice: PosSlice) -> Tensor:
    n = len(_tower(cache, tower).blocks)
    if layer == n:
        return _from_cache(cache, "resid_post", n - 1, tower, pos_slice)
    return _from_cache(cache, "resid_mid" if mlp_input else "resid_pre", layer, tower, pos_slice)


def _with_remainder(cache, stack: Tensor | None, labels: list[str], layer: int, options: dict):
    """A head or neuron stack (``None``: no block before ``layer``) read out, with the
    ``"remainder"`` row where ``incl_remainder``; these stacks are read at the block's input."""
    if options["incl_remainder"]:
        resid = _resid_at(cache, layer, False, options["tower"], options["pos_slice"])
        total = stack.sum(0) if stack is not None else torch.zeros_like(resid)
        remainder = (resid - total).unsqueeze(0)
        stack = remainder if stack is None else torch.cat([stack, remainder])
        labels = [*labels, "remainder"]
    if stack is None:
        raise ValueError("no components before layer 0: pass a later layer or incl_remainder=True")
    return _read_out(cache, stack, labels, layer, options, mlp_input=False)


def _read_out(cache, stack: Tensor, labels: list[str], layer: int, options: dict, mlp_input: bool):
    """TransformerLens's return convention (:class:`ResidReadout`): the stack (through the
    LayerNorm of ``layer``, or of its MLP with ``mlp_input``, when ``apply_ln``), with its labels
    when ``return_labels``."""
    if options["apply_ln"]:
        stack = apply_ln_to_stack(cache, stack, layer, mlp_input, options["pos_slice"], tower=options["tower"])
    return (stack, labels) if options["return_labels"] else stack


def accumulated_resid(
    cache: ActivationCache, layer: int | None = None, **options: Unpack[AccumulatedOptions]
) -> Stack | tuple[Stack, list[str]]:
    """The residual stream entering each block before ``layer`` and ``layer`` itself; with
    ``layer`` ``None`` / ``n_layers``, every block's input and the last block's output.
    ``[n, batch, *pos, d_model]``, labels ``"0_pre"``, (``"0_mid"``), ..., ``"final_post"``:
    the logit lens's input.

    Options (keyword only): ``incl_mid`` adds each block's ``resid_mid``; ``mlp_input`` adds
    the ``resid_mid`` of ``layer`` too (and ``apply_ln`` then uses its ``ln2``); ``apply_ln``,
    ``pos_slice``, ``return_labels``, ``tower`` as for every stack (:class:`AccumulatedOptions`)."""
    options = _completed(options, AccumulatedOptions, "accumulated_resid")
    tower, pos_slice = options["tower"], options["pos_slice"]
    n_layers = len(_tower(cache, tower).blocks)
    layer = _layers(cache, layer, tower)
    rows, labels = [], []

    def add(short: str, block: int, label: str) -> None:
        rows.append(_from_cache(cache, short, block, tower, pos_slice))
        labels.append(label)

    for block in range(layer):
        add("resid_pre", block, f"{block}_pre")
        if options["incl_mid"]:
            add("resid_mid", block, f"{block}_mid")
    if layer == n_layers:
        add("resid_post", n_layers - 1, "final_post")
    else:
        add("resid_pre", layer, f"{layer}_pre")
        if options["mlp_input"]:
            add("resid_mid", layer, f"{layer}_mid")
    return _read_out(cache, torch.stack(rows), labels, layer, options, options["mlp_input"])


def _embed_rows(cache, tower: str, pos_slice: PosSlice) -> tuple[list[Tensor], list[str]]:
    """The embedding slot: ``resid_pre 0`` (one row, "embed") when a LayerNorm follows the
    embeddings (CLIP's ``ln_pre``), else the token and position embeddings separately."""
    module = _tower(cache, tower)
    if getattr(module, "ln_pre", None) is not None:
        return [_from_cache(cache, "resid_pre", 0, tower, pos_slice)], ["embed"]
    return [
        _from_cache(cache, f"{tower}.hook_embed", None, tower, pos_slice),
        _from_cache(cache, f"{tower}.hook_pos_embed", None, tower, pos_slice),
    ], ["embed", "pos_embed"]


def decompose_resid(
    cache: ActivationCache, layer: int | None = None, **options: Unpack[DecomposeOptions]
) -> Stack | tuple[Stack, list[str]]:
    """The residual stream entering ``layer`` split into the embedding slot and each block's
    ``attn_out`` / ``mlp_out``: ``[n, batch, *pos, d_model]``, labels ``"embed"``,
    ``"0_attn_out"``, ...; they sum to the residual stream.

    Options (keyword only): ``mlp_input`` splits the stream entering the MLP of ``layer``
    (adding that block's ``attn_out``); ``mode`` "all", "attn" or "mlp" keeps both kinds of
    output or one; ``incl_embeds`` (default True) keeps the embedding slot; ``apply_ln``,
    ``pos_slice``, ``return_labels``, ``tower`` as for every stack (:class:`DecomposeOptions`)."""
    options = _completed(options, DecomposeOptions, "decompose_resid")
    mode, tower, pos_slice, mlp_input = options["mode"], options["tower"], options["pos_slice"], options["mlp_input"]
    if mode not in ("all", "attn", "mlp"):
        raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
    layer = _layers(cache, layer, tower)
    rows, labels = _embed_rows(cache, tower, pos_slice) if options["incl_embeds"] else ([], [])
    for block in range(layer + int(mlp_input)):
        if mode in ("all", "attn"):
            rows.append(_from_cache(cache, "attn_out", block, tower, pos_slice))
            labels.append(f"{block}_attn_out")
        if mode in ("all", "mlp") and block < layer:
            rows.append(_from_cache(cache, "mlp_out", block, tower, pos_slice))
            labels.append(f"{block}_mlp_out")
    return _read_out(cache, torch.stack(rows), labels, layer, options, mlp_input)


def get_full_resid_decomposition(
    cache: ActivationCache, layer: int | None = None, **options: Unpack[FullDecompositionOptions]
) -> Stack | tuple[Stack, list[str]]:
    """Every head, every MLP (each neuron with ``expand_neurons``), the embedding slot and one
    ``"bias"`` row (the accumulated ``b_O`` and ``b_out``): ``[n, batch, *pos, d_model]``, rows
    summing to the residual stream entering ``layer``.

    Options (keyword only): ``mlp_input`` decomposes the stream entering the MLP of ``layer``
    (adding that block's heads); ``expand_neurons`` (default True) gives each neuron a row, else
    each MLP one; ``apply_ln``, ``pos_slice``, ``return_labels``, ``tower`` as for every stack
    (:class:`FullDecompositionOptions`)."""
    options = _completed(options, FullDecompositionOptions, "get_full_resid_decomposition")
    tower, pos_slice, mlp_input = options["tower"], options["pos_slice"], options["mlp_input"]
    module = _tower(cache, tower)
    layer = _layers(cache, layer, tower)
    upto = layer + int(mlp_input)
    heads, labels = (
        stack_head_results(cache, upto, return_labels=True, pos_slice=pos_slice, tower=tower)
        if upto > 0
        else (None, [])
    )
    rows = [heads] if heads is not None else []
    if layer > 0:
        if options["expand_neurons"]:
            neurons, neuron_labels = stack_neuron_results(
                cache, layer, pos_slice=pos_slice, return_labels=True, tower=tower
            )
            rows.append(neurons)
            labels += neuron_labels
        else:
            rows.append(
                torch.stack([_from_cache(cache, "mlp_out", b, tower, pos_slice) for b in range(layer)])
                - torch.stack([module.blocks[b].mlp.b_out.detach() for b in range(layer)]).reshape(
                    layer, *([1] * (rows[0].ndim - 2 if rows else 0)), -1
                )
            )
            labels += [f"{b}_mlp_out" for b in range(layer)]
    embed_rows, embed_labels = _embed_rows(cache, tower, pos_slice)
    reference = embed_rows[0]
    rows.append(torch.stack(embed_rows))
    labels += embed_labels
    bias = module.accumulated_bias(layer, mlp_input).to(reference)
    rows.append(bias.expand_as(reference).unsqueeze(0))
    labels.append("bias")
    return _read_out(cache, torch.cat(rows), labels, layer, options, mlp_input)
