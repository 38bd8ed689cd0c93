"""The Result protocol: every result object saves, loads, summarises, exports and prints alike.

A result is a dataclass that mixes in :class:`Result` and declares

* ``_kind``: its format name (``"textspan"``) and the stem of its files;
* ``_tensor_fields``: fields holding a tensor, a numpy array or ``None`` (saved to safetensors);
* ``_json_fields``: everything else worth keeping (saved to JSON); left out, it is every dataclass
  field that is neither a tensor field nor ``model``;
* a ``model`` field: the :func:`~hookedclip.identity.model_identity` of the model it was
  computed with, or ``None`` for results computed from tensors alone;
* ``_table()``: a header and one row per entry (what :meth:`~Result.to_csv` writes and
  :meth:`~Result.summary` prints).

``save(path)`` writes the folder ``path`` with ``{kind}.safetensors`` and ``{kind}.json`` (the
JSON fields, the model identity and a format version); ``load(path, model=...)`` reads it
back and refuses a model other than the recorded one. Results with nested parts override
``_state`` / ``_from_state``. Results with a useful figure add ``plot(path=None)``, which
returns a matplotlib ``Figure`` (and writes it when ``path`` is given), drawn with
:func:`hookedclip.plotting.new_figure` and :func:`~hookedclip.plotting.finish_figure`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from hookedclip.identity import ModelIdentity, check_same_model, model_label
from hookedclip.plotting import finish_figure, new_figure  # noqa: F401 (a result's plot draws with these)

#: Rows :meth:`Result.summary` prints before eliding the rest (``to_csv`` writes them all).
SUMMARY_ROWS = 20
#: Longest ``repr``; longer ones are cut with an ellipsis.
REPR_CHARS = 240


class ResultFormatError(ValueError):
    """A saved result that this class cannot read (another kind, another format version)."""


class Result:
    """Save/load, summary, CSV and a short repr for a dataclass result (see the module docstring)."""

    _kind: ClassVar[str] = "result"
    _version: ClassVar[int] = 1
    _tensor_fields: ClassVar[tuple[str, ...]] = ()
    #: ``None``: every dataclass field other than the tensor fields and ``model`` (:meth:`_json_names`).
    _json_fields: ClassVar[tuple[str, ...] | None] = None
    model: ModelIdentity | None

    # ---- the table
    def _table(self) -> tuple[list[str], list[list]]:
        """``(header, rows)``: one row per entry of the result."""
        raise NotImplementedError(f"{type(self).__name__} defines no table")

    def _title(self) -> str:
        return f"{type(self).__name__} of {model_label(self.model)}"

    def summary(self) -> str:
        """A short human-readable table: a title line, then the first rows of :meth:`to_csv`."""
        header, rows = self._table()
        return "\n".join([self._title(), *format_table(header, rows)])

    def __str__(self) -> str:
        return self.summary()

    def to_csv(self, path: str | Path | None = None) -> str:
        """The table as CSV text (a header, then one row per entry); written to ``path`` when given."""
        header, rows = self._table()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        text = out.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    # ---- printing
    def _repr_sizes(self) -> dict[str, Any]:
        """What ``repr`` shows besides the model: tensor shapes by default."""
        return {
            name: list(value.shape) for name in self._tensor_fields if (value := getattr(self, name, None)) is not None
        }

    def __repr__(self) -> str:
        parts = [f"model={str(self.model) if self.model else None!r}"]
        parts += [f"{k}={v}" for k, v in self._repr_sizes().items()]
        text = f"{type(self).__name__}({', '.join(parts)})"
        return text if len(text) <= REPR_CHARS else text[: REPR_CHARS - 4] + "...)"

    # ---- the model
    def check_model(self, model) -> None:
        """Raise :class:`~hookedclip.identity.ModelMismatch` unless ``model`` is the model this
        result was computed with."""
        check_same_model(self.model, model, f"this {type(self).__name__}")

    # ---- persistence
    @classmethod
    def _json_names(cls) -> tuple[str, ...]:
        """The fields saved to JSON: ``_json_fields``, or else every dataclass field that is neither a
        tensor field nor ``model`` (so a result need not list its fields twice)."""
        if cls._json_fields is not None:
            return cls._json_fields
        skip = {*cls._tensor_fields, "model"}
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in skip)

    def _state(self) -> tuple[dict[str, Tensor | np.ndarray | None], dict[str, Any]]:
        """``(tensors, fields)`` to save; ``None`` tensors are left out of the file."""
        return (
            {name: getattr(self, name) for name in self._tensor_fields},
            {name: getattr(self, name) for name in self._json_names()},
        )

    @classmethod
    def _from_state(
        cls, tensors: dict[str, Tensor | np.ndarray | None], fields: dict[str, Any], model: ModelIdentity | None
    ):
        return cls(**tensors, **fields, model=model)

    @classmethod
    def _format(cls) -> str:
        return f"hookedclip.{cls._kind}"

    def save(self, path: str | Path) -> Path:
        """Write ``{kind}.safetensors`` (tensors) and ``{kind}.json`` (everything else, with the
        model identity and the format version) into the folder ``path``; returns ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors, fields = self._state()
        stored, numpy = {}, []
        for name, value in tensors.items():
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                numpy.append(name)
                value = torch.from_numpy(np.ascontiguousarray(value))
            stored[name] = value.detach().to("cpu").contiguous().clone()  # clone: no shared storage
        meta = {
            "format": self._format(),
            "version": self._version,
            "class": type(self).__name__,
            "model": self.model,
            "fields": fields,
            "tensors": sorted(stored),
            "numpy": numpy,
        }
        save_file(stored, str(path / f"{self._kind}.safetensors"))
        (path / f"{self._kind}.json").write_text(json.dumps(meta, indent=1, default=_jsonable) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, model=None, device: str | torch.device = "cpu"):
        """Read a result written by :meth:`save`. With ``model``, a model other than the one the
        result was computed with is refused (:class:`~hookedclip.identity.ModelMismatch`)."""
        from safetensors.torch import load_file

        path = Path(path)
        meta = cls._read_meta(path)
        if model is not None:
            check_same_model(meta["model"], model, f"the {cls.__name__} saved at {path}")
        loaded = load_file(str(path / f"{cls._kind}.safetensors"), device=str(device))
        tensors: dict[str, Any] = {name: None for name in cls._tensor_fields}
        for name, value in loaded.items():
            tensors[name] = value.cpu().numpy() if name in meta.get("numpy", []) else value
        return cls._from_state(tensors, meta["fields"], ModelIdentity.of(meta["model"]))

    @classmethod
    def _read_meta(cls, path: Path) -> dict:
        file = path / f"{cls._kind}.json"
        if not file.exists():
            found = [p for p in sorted(path.glob("*.json")) if p.with_suffix(".safetensors").exists()]
            hint = f" (it holds {', '.join(p.name for p in found)}: {_load_hint(found[0])})" if found else ""
            raise FileNotFoundError(f"{file} not found: {path} is not a folder written by {cls.__name__}.save{hint}")
        meta = json.loads(file.read_text())
        if meta.get("format") != cls._format():
            raise ResultFormatError(
                f"{file} holds {meta.get('format')} ({meta.get('class')}), not "
                f"{cls._format()}: load it with {meta.get('class')}.load"
            )
        if meta.get("version") != cls._version:
            raise ResultFormatError(
                f"{file} is {cls._format()} format v{meta.get('version')}; this hookedclip reads "
                f"v{cls._version} ({cls._upgrade_hint()}): compute the result again and save it"
            )
        return meta

    @classmethod
    def _upgrade_hint(cls) -> str:
        return "the file was written by another version of hookedclip"


def _load_hint(file: Path) -> str:
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError):
        return "not a hookedclip result"
    return f"load it with {meta.get('class')}.load" if "class" in meta else "not a hookedclip result"


def _jsonable(value):
    """JSON for the values results hold besides plain Python (numpy scalars, tensors, paths)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, Tensor)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot save {type(value).__name__} in a result's JSON")


def format_cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(header: list[str], rows: list[list], max_rows: int = SUMMARY_ROWS) -> list[str]:
    """Aligned text lines (indented two spaces) of the first ``max_rows`` rows."""
    shown = [[format_cell(v) for v in row] for row in rows[:max_rows]]
    cells = [list(map(str, header))] + shown
    widths = [max(len(r[c]) for r in cells) for c in range(len(header))]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    if len(rows) > max_rows:
        more = len(rows) - max_rows
        lines.append(f"  ... {more} more row{'s' * (more > 1)} (to_csv() has them all)")
    return lines


def deprecated_alias(old: str, new: str) -> None:
    """Warn that ``old`` is a deprecated name for ``new``."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


__all__ = [
    "SUMMARY_ROWS",
    "Result",
    "ResultFormatError",
    "deprecated_alias",
    "finish_figure",
    "format_cell",
    "format_table",
    "new_figure",
]
