"""The hooked tower inside a real LLaVA: ``hooked_vision_tower(llava)`` makes a ``transformers``
``LlavaForConditionalGeneration`` take its image features from a :class:`HookedCLIP`.

LLaVA reads ``hidden_states[vision_feature_layer]`` of its CLIP vision tower (index 0 is the
input of block 0, after ``pre_layrnorm``; index ``i`` the output of block ``i - 1``), drops
the class token under the ``"default"`` select strategy and passes the rest through its
multimodal projector. Under the context the tower module is swapped for a stand-in that runs
the hooked model up to the deepest layer LLaVA reads and hands back exactly those hidden
states; LLaVA's own code still selects the layer, applies the strategy and runs the
projector, so ``forward`` and ``generate`` are unchanged, and every hook and total-mode
engine context on the hooked model acts on the LLaVA run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from hookedclip import ablation
from hookedclip.loading.hf import convert_hf, hidden_state_hook_name
from hookedclip.model.hooked import HookedCLIP


class LlavaTowerError(ValueError):
    """A LLaVA model, feature layer or hooked model that :func:`hooked_vision_tower` cannot use."""


def llava_parts(llava: nn.Module) -> tuple[nn.Module, str]:
    """The module that owns ``vision_tower`` (``llava.model`` in transformers >= 4.52, ``llava``
    before) and the attribute name, after checking that the tower is a CLIP ViT."""
    if not type(llava).__name__.startswith("Llava") or not hasattr(
        getattr(llava, "config", None), "vision_feature_layer"
    ):
        raise LlavaTowerError(
            f"expected a transformers LlavaForConditionalGeneration (or LlavaModel), got {type(llava).__name__}"
        )
    for owner in (llava, getattr(llava, "model", None)):
        tower = getattr(owner, "vision_tower", None)
        if isinstance(tower, nn.Module):
            break
    else:
        raise LlavaTowerError(
            f"{type(llava).__name__} has no vision_tower (looked at .vision_tower, .model.vision_tower)"
        )
    if isinstance(tower, _HookedTower):
        raise LlavaTowerError("this LLaVA is already inside hooked_vision_tower; nest the contexts on the hooked model")
    if type(tower).__name__ != "CLIPVisionModel":
        raise LlavaTowerError(
            f"the vision tower of this {type(llava).__name__} is a {type(tower).__name__}, not a CLIP ViT "
            "(CLIPVisionModel): only CLIP vision towers can be replaced by a HookedCLIP"
        )
    return owner, "vision_tower"


def feature_layers(llava: nn.Module, n_layers: int) -> list[int]:
    """LLaVA's ``vision_feature_layer`` as non-negative ``hidden_states`` indices (``0..n_layers``)."""
    layer = llava.config.vision_feature_layer
    layers = [layer] if isinstance(layer, int) else list(layer)
    out = []
    for index in layers:
        if not -(n_layers + 1) <= index <= n_layers:
            raise LlavaTowerError(
                f"vision_feature_layer {index} is out of range: the vision tower has {n_layers} layers, so "
                f"hidden_states has {n_layers + 1} entries (indices {-(n_layers + 1)}..{n_layers})"
            )
        out.append(index % (n_layers + 1))
    return out


def check_same_weights(hooked: HookedCLIP, llava: nn.Module) -> None:
    """Raise :class:`LlavaTowerError` unless ``hooked`` holds exactly the weights of ``llava``'s tower."""
    _, state = convert_hf(llava)
    ours = hooked.state_dict()
    for name, theirs in state.items():
        if name == "logit_scale":
            continue
        mine = ours.get(name)
        if mine is None or mine.shape != theirs.shape:
            got = "missing" if mine is None else f"shape {tuple(mine.shape)}"
            raise LlavaTowerError(
                f"the hooked model does not match this LLaVA's vision tower: {name} is {got}, the tower's has "
                f"shape {tuple(theirs.shape)}; build it with HookedCLIP.from_hf(llava) (or pass hooked=None)"
            )
        if not torch.equal(mine.detach().to(theirs.device, theirs.dtype), theirs.detach()):
            raise LlavaTowerError(
                f"the hooked model has other weights than this LLaVA's vision tower (first difference: {name}); "
                "build it with HookedCLIP.from_hf(llava) without weight processing (or pass hooked=None)"
            )


class _HiddenStates(Sequence):
    """HF's ``hidden_states`` tuple, holding only the entries LLaVA reads (others raise)."""

    def __init__(self, states: dict[int, Tensor], n: int) -> None:
        self.states, self.n = states, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self[i] for i in range(self.n)[index])
        i = index % self.n if -self.n <= index < self.n else index
        if i not in self.states:
            raise LookupError(
                f"hidden_states[{index}] was not computed by the hooked tower, which returns the entries "
                f"{sorted(self.states)} (LLaVA's vision_feature_layer): set llava.config.vision_feature_layer "
                "instead of passing another layer per call"
            )
        return self.states[i]


class _HookedTower(nn.Module):
    """Stands in for LLaVA's ``vision_tower``: the hooked model's hidden states, HF's output type."""

    def __init__(self, original: nn.Module, hooked: HookedCLIP, layers: list[int]) -> None:
        super().__init__()
        object.__setattr__(self, "hooked", hooked)  # not a submodule: LLaVA's parameters stay its own
        object.__setattr__(self, "original", original)
        self.config = original.config
        self.layers = layers

    @property
    def dtype(self) -> torch.dtype:
        return self.hooked.dtype

    @property
    def device(self) -> torch.device:
        return self.hooked.device

    def forward(self, pixel_values: Tensor, output_hidden_states=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if kwargs.get("interpolate_pos_encoding"):
            raise NotImplementedError("hooked_vision_tower: interpolate_pos_encoding=True is not supported")
        direct = [edit for edit in ablation.active(self.hooked) if edit.mode == "direct"]
        if direct:
            raise LlavaTowerError(
                f"a direct-mode edit is in force ({direct[0]}): it changes only CLIP's joint embedding, which "
                "LLaVA does not read; use mode='total' so the edit reaches the features LLaVA reads"
            )
        images = pixel_values.to(self.hooked.device, self.hooked.dtype)
        states = hidden_states(self.hooked, images, self.wanted(output_hidden_states))
        states = {i: x.to(pixel_values.device) for i, x in states.items()}  # where LLaVA's projector expects them
        n = self.hooked.cfg.vision.layers + 1
        return BaseModelOutputWithPooling(last_hidden_state=states[max(states)], hidden_states=_HiddenStates(states, n))

    def wanted(self, requested) -> list[int]:
        """The hidden-state indices to compute: those transformers asks for when it names them
        (5.x passes ``output_hidden_states=vision_feature_layer``), else the config's."""
        n = self.hooked.cfg.vision.layers + 1
        if isinstance(requested, int) and not isinstance(requested, bool):
            requested = [requested]
        if isinstance(requested, (list, tuple)) and all(isinstance(i, int) for i in requested):
            if any(not -n <= i < n for i in requested):
                raise LlavaTowerError(f"vision_feature_layer {requested} is out of range for {n} hidden states")
            return sorted({i % n for i in requested})
        return self.layers


def hidden_states(hooked: HookedCLIP, images: Tensor, layers: Sequence[int]) -> dict[int, Tensor]:
    """HF's ``hidden_states[i]`` (``[batch, pos, d_model]``) for each ``i`` in ``layers``, from one
    forward of the hooked tower that stops after the deepest of them."""
    n_layers = hooked.cfg.vision.layers
    deepest = max(layers)
    names = {hidden_state_hook_name(i, n_layers): i for i in layers if i != deepest}
    states: dict[int, Tensor] = {}

    def keep(x: Tensor, hook) -> None:
        states[names[hook.name]] = x

    fwd = [(lambda name: name in names, keep)] if names else []
    with hooked.hooks(fwd_hooks=fwd) if fwd else contextlib.nullcontext():
        states[deepest] = hooked.encode_image(images, stop_at_layer=deepest)
    return states


@contextlib.contextmanager
def hooked_vision_tower(llava: nn.Module, hooked: HookedCLIP | None = None) -> Iterator[HookedCLIP]:
    """Within the context, ``llava`` takes its image features from ``hooked``.

    Args:
        llava: a ``transformers`` ``LlavaForConditionalGeneration`` (or ``LlavaModel``) whose
            vision tower is a ``CLIPVisionModel``.
        hooked: the hooked model to use; it must hold exactly the tower's weights (no weight
            processing). Default: ``HookedCLIP.from_hf(llava)``, built on entry.

    Yields the hooked model. Its hooks, caches and total-mode engine contexts
    (``ablation.mean_ablate(hooked, ..., mode="total")``) act on every LLaVA ``forward`` and
    ``generate`` inside; only the blocks up to the deepest layer LLaVA reads run. Direct-mode
    contexts edit CLIP's joint embedding, which LLaVA never reads: a forward under one raises.

    Raises :class:`LlavaTowerError` before any work for a tower that is not a CLIP ViT, a
    ``vision_feature_layer`` out of range, or a hooked model with other weights.
    """
    owner, attr = llava_parts(llava)
    original = getattr(owner, attr)
    n_layers = len(_encoder_layers(original))
    layers = feature_layers(llava, n_layers)
    if hooked is None:
        hooked = HookedCLIP.from_hf(llava)
    elif not isinstance(hooked, HookedCLIP):
        raise LlavaTowerError(f"hooked must be a HookedCLIP (or None to build one), got {type(hooked).__name__}")
    else:
        check_same_weights(hooked, llava)
    setattr(owner, attr, _HookedTower(original, hooked, layers))
    try:
        yield hooked
    finally:
        setattr(owner, attr, original)


def _encoder_layers(tower: nn.Module) -> nn.ModuleList:
    inner = getattr(tower, "vision_model", tower)
    return inner.encoder.layers
