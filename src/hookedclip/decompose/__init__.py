"""Residual-stream decomposition of CLIP embeddings into per-component direct contributions.

The image embedding is ``e = LN_post(pool(r^L)) @ P + b_proj``. The residual stream is a
sum of component outputs (the embedding slot ``m^0``, every head, every MLP), and with the
LayerNorm statistics frozen at the clean run LN_post is affine, so ``e`` splits exactly
into one row per component, the convention of TextSpan (Gandelsman et al., 2024).

Pooling and LayerNorm are handled by readout weights ``κ_q`` over query positions (see
:mod:`hookedclip.decompose.readout`), so a head's row is its attention, re-weighted by ``κ``
over queries, times ``W_O · diag(γ) · P``: no ``[batch, pos, head, d_model]`` tensor is formed.

Two conventions distribute the frozen mean ``μ`` and ``β`` over components
(``ln_mode``): ``"reference"`` gives component ``c`` the share ``ω_c`` of both (MLP and
embedding slots ``1/N_c`` with ``N_c = 2L + 1``, heads ``1/(N_c H)``, head-tokens
``1/(N_c H T)``); ``"center_each"`` centres each component by its own mean and shares
only ``β``. Both sum to the same embedding.

The package, one concept a module: ``stack`` (:class:`ComponentStack`, the result),
``readout`` (readout weights, pooling, frozen LayerNorm, the per-row computation),
``capture`` (the hook points a decomposition reads, :func:`needed_hooks`), ``memory``
(:func:`plan_chunks`, :func:`estimate_memory`), ``image`` (:func:`decompose_image`,
:func:`decompose_text`, :func:`stack_from_cache`) and ``residual`` (the
:class:`~hookedclip.ActivationCache` analyses).
"""

# ``name as name``: private names reached through the package (``residual`` reads the pool
# weights; tests read the memory parts and patch the row computation).
from hookedclip.decompose.capture import needed_hooks
from hookedclip.decompose.image import decompose_image, decompose_text, stack_from_cache
from hookedclip.decompose.memory import _memory_parts as _memory_parts
from hookedclip.decompose.memory import estimate_memory, plan_chunks
from hookedclip.decompose.readout import LnMode, Positions, Tokens
from hookedclip.decompose.readout import _pool_weights as _pool_weights
from hookedclip.decompose.readout import _Rows as _Rows
from hookedclip.decompose.stack import ComponentStack

__all__ = [
    "ComponentStack",
    "LnMode",
    "Positions",
    "Tokens",
    "decompose_image",
    "decompose_text",
    "estimate_memory",
    "needed_hooks",
    "plan_chunks",
    "stack_from_cache",
]
