"""The keyword options of the residual-stream stacks (:mod:`hookedclip.decompose.residual`),
declared once: each function's ``TypedDict`` adds its own options to the ones it shares, and
:data:`RESID_DEFAULTS` holds every default (TransformerLens's)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Literal, TypedDict

from jaxtyping import Float
from torch import Tensor

from hookedclip.caching import PosSlice

#: A stack of residual-stream vectors, one row a component (or a layer).
Stack = Float[Tensor, "component batch *pos d_model"]


class ResidReadout(TypedDict, total=False):
    """What every stack function here does with its stack at the end (TransformerLens's options,
    taken by keyword only, with the same defaults everywhere: :data:`RESID_DEFAULTS`).

    ``apply_ln`` (False): pass the stack through the frozen LayerNorm the stream meets at
    ``layer`` (:func:`apply_ln_to_stack`: ``ln1``, ``ln2`` with ``mlp_input``, ``ln_post`` at the
    end). ``pos_slice`` (None: every position): keep these token positions (``0``: the class
    token only, small). ``return_labels`` (False): return ``(stack, labels)``. ``tower``
    ("visual"): the tower whose stream is read."""

    apply_ln: bool
    pos_slice: PosSlice
    return_labels: bool
    tower: str


class HeadStackOptions(ResidReadout, total=False):
    """:func:`stack_head_results`'s options: ``incl_remainder`` (False) adds one row, the residual
    stream entering ``layer`` minus the stacked components (``"remainder"``)."""

    incl_remainder: bool


class NeuronStackOptions(HeadStackOptions, total=False):
    """:func:`stack_neuron_results`'s options: ``neuron_slice`` (None: every neuron) keeps these
    neurons of each block."""

    neuron_slice: PosSlice


class BlockInputOptions(ResidReadout, total=False):
    """Options of the stacks that sum to the stream entering a block: ``mlp_input`` (False) reads
    the stream entering block ``layer``'s MLP (``resid_mid``) in place of the block's input."""

    mlp_input: bool


class AccumulatedOptions(BlockInputOptions, total=False):
    """:func:`accumulated_resid`'s options: ``incl_mid`` (False) adds each block's ``resid_mid``."""

    incl_mid: bool


class DecomposeOptions(BlockInputOptions, total=False):
    """:func:`decompose_resid`'s options: ``mode`` ("all") keeps the attention and MLP outputs
    ("all"), or only one kind ("attn", "mlp"); ``incl_embeds`` (True) keeps the embedding slot."""

    mode: Literal["all", "attn", "mlp"]
    incl_embeds: bool


class FullDecompositionOptions(BlockInputOptions, total=False):
    """:func:`get_full_resid_decomposition`'s options: ``expand_neurons`` (True) gives each MLP
    neuron a row, else each MLP one row (its output less ``b_out``)."""

    expand_neurons: bool


#: The default of every option above, one place for all the functions (TransformerLens's defaults).
RESID_DEFAULTS = MappingProxyType(
    {
        "apply_ln": False,
        "pos_slice": None,
        "return_labels": False,
        "tower": "visual",
        "incl_remainder": False,
        "neuron_slice": None,
        "mlp_input": False,
        "incl_mid": False,
        "mode": "all",
        "incl_embeds": True,
        "expand_neurons": True,
    }
)
