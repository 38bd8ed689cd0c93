"""Concept dictionaries: the text embeddings a head's directions are explained with.

A :class:`Dictionary` holds one raw embedding per concept (``[n_concepts, d_out]``), the concepts'
names, and the identity of the model that embedded them. :func:`dictionary` builds one from

- a text file, one concept per line (blank lines and lines starting with ``#`` are skipped);
- a built-in vocabulary by name (``"toy"``: the toy world's words; ``"imagenet"``, ``"english"``, ...;
  :data:`hookedclip.data.vocab.BUILTIN`);
- a list of concept strings;
- any ``[n_concepts, d]`` tensor (then no model is recorded: nothing says which model made it).

Concepts are embedded with the model's text tower, without a prompt template, once: the
embeddings are cached on disk under the model's identity (:func:`hookedclip.data.vocab.
text_embeddings`). Empty lines and repeated concepts are dropped with one warning that gives
the counts. :meth:`Dictionary.check_for` refuses a dictionary embedded by another model or of
another width, before any work is done.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jaxtyping import Float
from torch import Tensor

from hookedclip.axis_size import axis_size
from hookedclip.identity import ModelIdentity, check_same_model, model_identity, model_label
from hookedclip.methods.sith.pursuit import prepare_dictionary
from hookedclip.results import Result


@dataclass(repr=False)
class Dictionary(Result):
    """Concept embeddings and their names.

    Attributes:
        embeddings: ``[n_concepts, d_out]`` raw text embeddings (not normalised).
        concepts: the name of each row.
        source: where the concepts came from (a file, a built-in name, ``"list"``, ``"tensor"``).
        model: the identity of the model that embedded them (``None`` for a given tensor).
    """

    _kind = "sith_dictionary"
    _tensor_fields = ("embeddings",)
    _json_fields = ("concepts", "source")

    embeddings: Float[Tensor, "n_concepts d"]
    concepts: list[str]
    source: str = "tensor"
    model: ModelIdentity | None = None
    _atoms: Tensor | None = field(default=None, init=False, compare=False)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    width = axis_size("embeddings", 1, "The width of the embeddings (the joint space's).")

    @property
    def atoms(self) -> Float[Tensor, "n_concepts d"]:
        """The rows the pursuits use: :func:`~hookedclip.methods.sith.prepare_dictionary` of the
        embeddings (unit rows, centred on their mean, unit rows), float32, computed once."""
        if self._atoms is None:
            self._atoms = prepare_dictionary(self.embeddings.float())
        return self._atoms

    def index(self, concept: str) -> int:
        """The row of ``concept``, or a ``KeyError`` naming a few that exist."""
        try:
            return self.concepts.index(concept)
        except ValueError:
            raise KeyError(
                f"{concept!r} is not in this dictionary of {len(self)} concepts (e.g. {', '.join(self.concepts[:3])})"
            ) from None

    def check_for(self, model) -> None:
        """Refuse a dictionary embedded by another model or of a width other than the model's
        joint space (``d_out``)."""
        d_out = joint_width(model)
        if self.width != d_out:
            raise ValueError(
                f"the dictionary is {self.width} wide but this model's joint space is {d_out} wide: "
                "embed the concepts with this model (sith.dictionary(model, concepts))"
            )
        if self.model is not None:
            check_same_model(self.model, model, f"this dictionary ({self.source})")

    def _title(self) -> str:
        return f"Dictionary of {len(self)} concepts ({self.source}), width {self.width}, from {model_label(self.model)}"

    def _table(self) -> tuple[list[str], list[list]]:
        return ["index", "concept"], [[i, c] for i, c in enumerate(self.concepts)]

    def _repr_sizes(self) -> dict:
        return {"concepts": len(self), "width": self.width, "source": repr(self.source)}


def joint_width(model) -> int:
    """``d_out`` of the model's image projection, or a clear error when it has none."""
    W_proj = getattr(model.visual, "W_proj", None)
    if W_proj is None:
        raise ValueError(
            "this model's image tower has no projection into a joint image-text space (output_dim is None): "
            "SITH explains head directions in that space; use a CLIP model with both towers"
        )
    return W_proj.shape[1]


def dictionary(
    model,
    source: str | Path | Sequence[str] | Tensor | Dictionary,
    concepts: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
) -> Dictionary:
    """A :class:`Dictionary` for ``model`` from a file, a built-in vocabulary name, a list of
    concepts or an ``[n_concepts, d_out]`` tensor (module docstring).

    Args:
        model: the :class:`~hookedclip.HookedCLIP` whose text tower embeds the concepts (and whose
            joint width a tensor must have).
        source: the concepts (or their embeddings); a :class:`Dictionary` is checked and returned.
        concepts: names of a tensor's rows (default ``"concept 0"``, ...).
        cache_dir: where embeddings are cached (default ``$HOOKEDCLIP_CACHE/text``).
    """
    if isinstance(source, Dictionary):
        source.check_for(model)
        return source
    if isinstance(source, Tensor):
        return _from_tensor(model, source, concepts)
    if concepts is not None:
        raise ValueError("concepts= names the rows of a tensor; a file or list already holds its concepts")
    if isinstance(source, (str, Path)):
        name, lines = _read_source(source)
    elif isinstance(source, Sequence) and all(isinstance(c, str) for c in source):
        name, lines = "list", list(source)
    else:
        raise ValueError(
            f"source must be a file, a built-in vocabulary name, a list of concepts or an [n, d] tensor, "
            f"got {type(source).__name__}"
        )
    texts = clean_concepts(lines, name)
    joint_width(model)
    from hookedclip.data.vocab import text_embeddings

    embeddings = text_embeddings(model, texts, cache_dir=cache_dir, normalize=False)
    return Dictionary(embeddings=embeddings, concepts=texts, source=name, model=model_identity(model))


def clean_concepts(lines: Sequence[str], source: str = "list") -> list[str]:
    """Stripped concepts without empty lines and repeats (the first occurrence kept), with one
    warning giving how many of each were dropped; at least two must remain."""
    stripped = [line.strip() for line in lines]
    kept = [line for line in stripped if line]
    unique = list(dict.fromkeys(kept))
    empty, repeated = len(stripped) - len(kept), len(kept) - len(unique)
    if empty or repeated:
        warnings.warn(
            f"dictionary {source}: dropped {empty} empty line(s) and {repeated} repeated concept(s); "
            f"{len(unique)} distinct concepts remain",
            stacklevel=3,
        )
    if len(unique) < 2:
        raise ValueError(f"dictionary {source} holds {len(unique)} distinct concept(s): at least 2 are needed")
    return unique


def _read_source(source: str | Path) -> tuple[str, list[str]]:
    from hookedclip.data.vocab import BUILTIN

    if str(source) in BUILTIN:
        return str(source), list(BUILTIN[str(source)]())
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"dictionary {source}: no such file, and not a built-in vocabulary ({', '.join(sorted(BUILTIN))}); "
            "give a text file with one concept per line"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    return str(path), [line for line in lines if not line.strip().startswith("#")]


def _from_tensor(model, embeddings: Tensor, concepts: Sequence[str] | None) -> Dictionary:
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"a dictionary tensor must be [n_concepts >= 2, d], got {tuple(embeddings.shape)}")
    if concepts is None:
        concepts = [f"concept {i}" for i in range(embeddings.shape[0])]
    if len(concepts) != embeddings.shape[0]:
        raise ValueError(f"{len(concepts)} concept names for {embeddings.shape[0]} rows: give one name per row")
    found = Dictionary(embeddings=embeddings.detach().float().cpu(), concepts=list(concepts), source="tensor")
    found.check_for(model)
    return found
