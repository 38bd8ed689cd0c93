"""One model identity: what every result and store records about the model it came from.

An identity is a small JSON-safe dict (:class:`ModelIdentity`)::

    {"name": "toy/toy-world-v1/82a6581c9135", "config_hash": "…16 hex…", "weights": "…16 hex…"}

``name`` is for people (the model name and its pretrained tag); ``config_hash`` is the
architecture's hash (:meth:`~hookedclip.config.CLIPConfig.hash`) and ``weights`` a
fingerprint of the parameters. Two identities describe the same model when the hash and
the fingerprint agree; the name is never compared, so one checkpoint loaded through two
loaders, on two devices or as fp32 and fp16 copies has one identity.

The fingerprint hashes, for every entry of the state dict (in name order), its name, its
shape and up to :data:`SAMPLE` evenly strided values **rounded to float16**: the rounding
makes an fp16 copy of an fp32 checkpoint hash alike, and reading a strided sample keeps the
cost of identifying a large model to a few milliseconds. Two checkpoints that differ only in
values between the sampled ones (an edit of single weights) share a fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping

import torch

#: Values of each state-dict tensor read by the fingerprint (all of them for smaller tensors).
SAMPLE = 1 << 12

#: The keys two identities must agree on to describe the same model.
COMPARED = ("config_hash", "weights")


class ModelMismatch(ValueError):
    """A result, store or cache used with a model other than the one it was computed with."""


class ModelIdentity(dict):
    """A model's identity: a plain ``dict`` (``name``, ``config_hash``, ``weights``) whose
    ``str`` is the short form reports print, e.g. ``"toy/toy-world-v1/82a6581c9135 (weights
    e784285a)"``."""

    def __str__(self) -> str:
        weights = str(self.get("weights") or "?")[:8]
        return f"{self.get('name') or 'unnamed model'} (weights {weights})"

    @classmethod
    def of(cls, identity: Mapping | None) -> ModelIdentity | None:
        """A recorded identity (e.g. read back from JSON) as a :class:`ModelIdentity`."""
        return None if identity is None else cls(identity)


def model_label(identity: Mapping | None) -> str:
    """How summaries, titles and reports name the model a result came from: the identity's short
    form (:class:`ModelIdentity`), or ``"no recorded model"``."""
    return str(ModelIdentity(identity)) if identity else "no recorded model"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """16 hex digits of a sha256 over every state-dict tensor's name, shape and up to
    :data:`SAMPLE` strided values rounded to float16 (device- and fp32/fp16-independent)."""
    entries = sorted(model.state_dict().items())
    if not entries:
        return hashlib.sha256(b"").hexdigest()[:16]
    device = entries[0][1].device
    samples = []
    for _, tensor in entries:
        flat = tensor.detach().reshape(-1)
        samples.append(flat[:: max(1, math.ceil(flat.numel() / SAMPLE))].to(device, torch.float16))
    values = torch.cat(samples).cpu()  # one transfer from an accelerator, not one per tensor
    h = hashlib.sha256(json.dumps([[name, list(t.shape)] for name, t in entries]).encode())
    h.update(values.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def model_identity(model) -> ModelIdentity:
    """The identity of a :class:`~hookedclip.HookedCLIP` (or anything with a ``cfg`` of type
    :class:`~hookedclip.config.CLIPConfig` and a ``state_dict``): ``name``, ``config_hash`` and
    ``weights`` (see the module docstring)."""
    cfg = model.cfg
    name = str(cfg.model_name) + (f"/{cfg.pretrained}" if cfg.pretrained else "")
    return ModelIdentity(name=name, config_hash=cfg.hash(), weights=weights_fingerprint(model))


def as_identity(model_or_identity) -> ModelIdentity | None:
    """An identity as given (a mapping) or computed from a model; ``None`` stays ``None``."""
    if model_or_identity is None or isinstance(model_or_identity, Mapping):
        return ModelIdentity.of(model_or_identity)
    return model_identity(model_or_identity)


def differences(recorded: Mapping | None, other: Mapping | None) -> list[str]:
    """The compared keys (``config_hash``, ``weights``) on which two identities disagree."""
    recorded, other = recorded or {}, other or {}
    return [key for key in COMPARED if recorded.get(key) is None or recorded.get(key) != other.get(key)]


def same_model(recorded: Mapping | None, other: Mapping | None) -> bool:
    return not differences(recorded, other)


def describe_mismatch(recorded: Mapping | None, other: Mapping | None) -> str:
    """``"<recorded> (config …, weights …), but the model given is <other> (…): weights differ"``."""

    def full(identity: Mapping) -> str:
        return (
            f"{identity.get('name') or 'unnamed model'} (config {identity.get('config_hash')}, "
            f"weights {identity.get('weights')})"
        )

    recorded, other = recorded or {}, other or {}
    return f"{full(recorded)}, but the model given is {full(other)}: {', '.join(differences(recorded, other))} differ"


def check_same_model(recorded: Mapping | None, model, what: str = "this result") -> None:
    """Raise :class:`ModelMismatch`, naming both models and what differs, unless ``model`` (a
    model or an identity) is the model ``recorded`` describes. ``what`` names the thing
    being checked in the message (``"this PCLensResult"``, ``"the store at …"``)."""
    theirs = as_identity(model)
    if recorded is None:
        raise ModelMismatch(
            f"{what} records no model (it was computed from tensors alone), so it cannot be "
            f"checked against {theirs}: use it without a model"
        )
    if not same_model(recorded, theirs):
        raise ModelMismatch(
            f"{what} was computed with {describe_mismatch(recorded, theirs)}. Results do not "
            "transfer between models: use the model it was computed with, or compute it again"
        )


__all__ = [
    "SAMPLE",
    "ModelIdentity",
    "ModelMismatch",
    "as_identity",
    "check_same_model",
    "describe_mismatch",
    "differences",
    "model_identity",
    "same_model",
    "weights_fingerprint",
]
