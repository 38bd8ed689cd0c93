"""Every hook name in one place: the TransformerLens-style short names and the builders that
turn a short name, a layer and a tower (or a component) into a full hook-point name.

Code elsewhere never writes a hook name with an f-string; it calls :func:`act_name`,
:func:`block_hook` or :func:`component_hook`, so a renamed hook point changes here only.
"""

from __future__ import annotations

from typing import Literal

from hookedclip.components import MLP, Component, Head

# TransformerLens-style short names -> hook point path inside a block.
_BLOCK_SHORT_NAMES = {
    **{k: f"attn.hook_{k}" for k in ("q", "k", "v", "z", "result", "pattern", "attn_scores")},
    "scores": "attn.hook_attn_scores",
    **{k: f"hook_{k}" for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")},
    "pre": "mlp.hook_pre",
    "post": "mlp.hook_post",
    "mlp_pre": "mlp.hook_pre",
    "mlp_post": "mlp.hook_post",
    "ln1": "ln1.hook_normalized",
    "ln2": "ln2.hook_normalized",
    "ln1_scale": "ln1.hook_scale",
    "ln2_scale": "ln2.hook_scale",
    # TransformerLens's aliases
    "attn": "attn.hook_pattern",
    "attn_logits": "attn.hook_attn_scores",
    "query": "attn.hook_q",
    "key": "attn.hook_k",
    "value": "attn.hook_v",
    "scale": "ln1.hook_scale",
    "normalized": "ln1.hook_normalized",
    **{k: f"hook_{k}" for k in ("attn_in", "q_input", "k_input", "v_input", "mlp_in")},
}
#: TransformerLens's third key element (the sublayer) for "scale" / "normalized", and its
#: one-letter shorthands; the tower stays "visual".
_LAYER_TYPES = {"ln1": "ln1", "ln2": "ln2", "a": "ln1", "m": "ln2", "attn": "ln1", "mlp": "ln2"}
# Short names outside the blocks.
_TOWER_SHORT_NAMES = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "pooled": "hook_pooled",
    "out": "hook_out",
    "ln_pre": "ln_pre.hook_normalized",
    "ln_post": "ln_post.hook_normalized",
    "ln_post_scale": "ln_post.hook_scale",
    "ln_final": "ln_final.hook_normalized",
    "ln_final_scale": "ln_final.hook_scale",
}


def act_name(short: str, layer: int | None = None, tower: str = "visual", n_layers: int | None = None) -> str:
    """The full hook name for a short name: ``act_name("z", 3) == "visual.blocks.3.attn.hook_z"``.

    A negative ``layer`` counts from the end and needs ``n_layers``. A ``"_grad"`` suffix is
    kept (``act_name("z_grad", 3)`` is the gradient entry of ``hook_z``).
    """
    suffix = ""
    if short.endswith("_grad"):
        short, suffix = short[: -len("_grad")], "_grad"
    if layer is None:
        if tower == "visual" and short.startswith("ln_final"):
            short = short.replace("ln_final", "ln_post")  # TransformerLens's name for open_clip's ln_post
        if short not in _TOWER_SHORT_NAMES:
            raise KeyError(
                f"{short!r} needs a layer index or is unknown; names without a layer: {', '.join(_TOWER_SHORT_NAMES)}"
            )
        return f"{tower}.{_TOWER_SHORT_NAMES[short]}{suffix}"
    if short not in _BLOCK_SHORT_NAMES:
        raise KeyError(f"unknown short name {short!r}; per-layer names: {', '.join(_BLOCK_SHORT_NAMES)}")
    if layer < 0:
        if n_layers is None:
            raise ValueError("a negative layer index needs the number of layers")
        layer += n_layers
    return f"{tower}.blocks.{layer}.{_BLOCK_SHORT_NAMES[short]}{suffix}"


def block_hook(layer: int, point: str, tower: str = "visual") -> str:
    """``block_hook(3, "attn.hook_z") == "visual.blocks.3.attn.hook_z"``: a hook point inside
    block ``layer`` given by its path in the block."""
    return f"{tower}.blocks.{layer}.{point}"


def tower_hook(point: str, tower: str = "visual") -> str:
    """``tower_hook("ln_post.hook_scale") == "visual.ln_post.hook_scale"``."""
    return f"{tower}.{point}"


def component_hook(component: Component, head_space: Literal["z", "result"] = "z", tower: str = "visual") -> str:
    """Where a component's output is written: a head's ``hook_z`` (or ``hook_result``), an
    MLP's ``hook_mlp_out``, the embedding slot's ``blocks.0.hook_resid_pre``."""
    if isinstance(component, Head):
        return block_hook(component.layer, f"attn.hook_{head_space}", tower)
    if isinstance(component, MLP):
        return block_hook(component.layer, "hook_mlp_out", tower)
    return block_hook(0, "hook_resid_pre", tower)
