"""The intervention engine: every edit of a component's output is a context manager that
composes with every other edit and always undoes itself (``docs/engine.md``).

:func:`intervene` is the one entry point and the extension point for new methods: a method
supplies the components, a ``replace(row, component) -> row`` and, in direct mode, an optional
``finalize(unit, rows, new_rows) -> unit`` over the whole rewritten unit embedding. The usual
ablations below (zero / mean / resample / project-out / keep-only) and PCLens's ``keep`` /
``remove`` / ``reweight`` / ``amplify`` are thin wrappers around it. :func:`intervene_at`
hosts a replacement at any hook site (an SAE spliced into ``blocks.{l}.hook_resid_post``).
:func:`active` lists the edits in force on a model.

Every context takes a set of components (``"L10H3"``, ``"mlp9"``, ``"embed"``, ``"L8-11"``)
and a ``mode``:

- ``mode="total"`` changes the component's output inside the real forward pass, so
  downstream layers see the change. Heads are edited at ``hook_z`` (zero / mean /
  resample) or ``hook_result`` (projections), MLPs at ``hook_mlp_out``, the embedding slot
  at ``blocks.0.hook_resid_pre``.
- ``mode="direct"`` changes only the component's direct path into the image embedding,
  with ``ln_post`` statistics frozen at the clean run: the embedding becomes
  ``e' = ‖e‖ (Σ_kept φ_c + Σ_ablated φ'_c)`` where ``φ_c`` are the decomposition rows of
  :func:`hookedclip.decompose.decompose_image` (TextSpan/PCLens accuracy protocol). The rest
  of the network is untouched. The rows are read from the activations the forward actually
  used, so ``model.hooks`` edits and total-mode edits, entered inside or outside, are part of
  what is decomposed.

Nested contexts of any kinds compose in one way (``docs/engine.md`` has the diagram):

- total edits are hook functions: at one hook point they run in entry order, outer first;
- direct edits are applied together by one rewrite of ``visual.hook_out``: per component,
  the replacements of every context listing it, outer first (an inner replace receives the
  outer one's result); then ``u = e/‖e₀‖ + Σ_c (φ'_c − φ_c)``; then every ``finalize``,
  outer first; then ``e' = ‖e₀‖ u``. ``‖e₀‖`` is the norm of the embedding before any direct
  rewrite, so nesting ``A`` then ``B`` over disjoint components equals ``B`` then ``A`` and
  one context over ``A ∪ B``.

Replacement values (``means``, ``directions``) live in the space the mode edits: for
``"total"``, the hook's space (``hook_z`` ``[pos, d_head]`` per head, ``[pos, d_model]`` for
MLPs and embed; directions in ``d_model``); for ``"direct"``, the joint space ``d_out``.
:func:`component_means` computes either kind from batches of images.
"""

from hookedclip.ablation.contexts import (
    keep_only,
    mean_ablate,
    project_out,
    resample_ablate,
    zero_ablate,
)
from hookedclip.ablation.engine import (
    Edit,
    Finalize,
    Mode,
    Replace,
    SiteReplace,
    ablate,
    active,
    intervene,
    intervene_at,
)
from hookedclip.ablation.means import component_means
from hookedclip.decompose import ComponentStack

__all__ = [
    "ComponentStack",
    "Edit",
    "Finalize",
    "Mode",
    "Replace",
    "SiteReplace",
    "ablate",
    "active",
    "component_means",
    "intervene",
    "intervene_at",
    "keep_only",
    "mean_ablate",
    "project_out",
    "resample_ablate",
    "zero_ablate",
]
