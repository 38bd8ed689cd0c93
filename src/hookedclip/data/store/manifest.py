"""The store's format: file names, manifest constants, target specs and the run header checks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hookedclip.data.store.errors import StoreMismatch
from hookedclip.identity import ModelIdentity, describe_mismatch, model_identity, same_model

#: v2: the manifest's ``model`` is :func:`hookedclip.identity.model_identity` (v1 hashed every weight's bytes).
FORMAT = "hookedclip-store/2"
MANIFEST = "manifest.json"
MOMENTS = "moments.safetensors"
ROW_KEYS = ("index", "label", "group")  # int64 bookkeeping rows stored with every target
MAX_COVARIANCE_BYTES = 64 * 2**20  # larger float64 scatters are tracked as means only ("auto")


@dataclass
class TargetSpec:
    """One stored quantity: per-row ``shape``, stored ``dtype`` and what moments are kept
    (``"cov"``: mean and covariance over the last axis, ``"mean"``, or ``"none"``).
    ``labels`` names the rows of a decomposition target's component axis."""

    name: str
    dtype: str
    shape: list[int]
    moments: str = "cov"
    labels: list[str] | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def moments_kind(shape: Sequence[int], requested: str = "auto") -> str:
    """``"auto"``: covariance when its float64 scatter ``[*shape[:-1], d, d]`` fits in
    ``MAX_COVARIANCE_BYTES``, else the mean only."""
    if requested != "auto":
        if requested not in ("cov", "mean", "none"):
            raise ValueError(f"moments must be 'auto', 'cov', 'mean' or 'none', got {requested!r}")
        return requested
    lead = 1
    for s in shape[:-1]:
        lead *= s
    return "cov" if shape and lead * shape[-1] ** 2 * 8 <= MAX_COVARIANCE_BYTES else "mean"


def model_fingerprint(model) -> ModelIdentity:
    """Deprecated: :func:`hookedclip.identity.model_identity`, which stores record."""
    warnings.warn(
        "model_fingerprint is deprecated; use hookedclip.identity.model_identity", DeprecationWarning, stacklevel=2
    )
    return model_identity(model)


def dataset_fingerprint(dataset) -> dict:
    """What identifies a dataset for resuming: its length and its ``fingerprint()`` (or,
    for a dataset without one, only its class name: such a store cannot tell two
    datasets of the same class and length apart)."""
    fp = getattr(dataset, "fingerprint", None)
    return {
        "length": len(dataset),
        "fingerprint": fp() if callable(fp) else f"{type(dataset).__name__} (no fingerprint)",
    }


def _describe_mismatch(key: str, stored, wanted) -> str:
    if key == "model":
        return f"it was extracted from {describe_mismatch(stored, wanted)}"
    if key == "dataset":
        return f"it was extracted from dataset {stored}; this run's dataset is {wanted}"
    if key == "targets":
        s = {t["name"]: (t["dtype"], t["shape"], t["moments"]) for t in stored}
        w = {t["name"]: (t["dtype"], t["shape"], t["moments"]) for t in wanted}
        return f"it holds targets {s}; this run asks for {w}"
    return f"its {key} is {stored!r}; this run's is {wanted!r}"


HEADER_KEYS = ("format", "model", "dataset", "targets", "rows_per_shard", "world_size", "params")
RESUME_FIX = "Use another output directory, or delete this one to start over."


def check_header(
    path: Path,
    stored: dict,
    wanted: dict,
    keys: Sequence[str] = HEADER_KEYS,
    action: str = "resume",
    fix: str = RESUME_FIX,
) -> None:
    """Refuse to ``action`` (resume, read) ``stored`` with a different ``wanted`` header,
    comparing ``keys`` and naming what differs."""
    for key in keys:
        same = stored.get(key) == wanted.get(key) or (key == "model" and same_model(stored.get(key), wanted.get(key)))
        if not same:
            raise StoreMismatch(
                f"cannot {action} the store at {path}: "
                f"{_describe_mismatch(key, stored.get(key), wanted.get(key))}. {fix}"
            )


def shard_name(rank: int, k: int) -> str:
    return f"rank{rank:03d}-shard{k:05d}.safetensors"


def rank_log_name(rank: int) -> str:
    return f"rank{rank:03d}.json"


def spec_dicts(specs: Sequence[TargetSpec]) -> list[dict]:
    return [asdict(s) for s in specs]
