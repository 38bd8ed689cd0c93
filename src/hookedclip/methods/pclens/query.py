"""QuerySystem: rank the PCs of the analysed heads for a concept.

A query embedding ``q`` (unit text or image embedding) is centred by the mean of its modality,
``q_c = q − μ_text`` or ``q − μ_images``. Every retained PC ``v_{l,h,i}`` gets
``a = ⟨q_c, v⟩`` and the score ``|a|`` (not weighted by strength, not divided by ‖q_c‖). The
PC's share of a reconstruction of ``q_c`` is ``a · (e_i Π V_k)``, i.e. ``a · v_i`` when
``Π = I``. Walking down the PCs by score, the cumulative reconstruction ``r_K`` is compared
with the full-basis one: ``max_score = cos(Σ_all a·e_iΠV_k, q_c)`` (PCs of different heads are
not orthogonal, so this is a sum, not a projection). The walk stops at ``top_k`` PCs or as
soon as ``cos(r_K, q_c) / max_score > approx``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip.identity import ModelIdentity
from hookedclip.methods.pclens.selection import PCSelection
from hookedclip.results import Result, deprecated_alias

if TYPE_CHECKING:
    from hookedclip.methods.pclens.result import PCLensResult


@dataclass
class QueryEntry:
    """One chosen PC: its head, index, ``a = ⟨q_c, v⟩``, ``cos(r_K, q_c)`` after adding it, and
    its label texts (``first`` is the side with the larger |coefficient|, each prefixed with its
    sign)."""

    head: str
    pc: int
    coefficient: float
    cumulative_cos: float
    first: str = ""
    second: str = ""

    @property
    def score(self) -> float:
        return abs(self.coefficient)


@dataclass(repr=False)
class QueryResult(Result):
    """The PCs chosen for one query (or the de-duplicated union of several, ``union``);
    ``model``: the identity of the model the PCLens result was fitted on."""

    _kind = "query"
    _json_fields = ("query", "entries", "max_score", "reached", "concepts", "_k")

    query: str
    entries: list[QueryEntry]
    max_score: float
    reached: float  # cos(r_K, q_c) of the chosen PCs (NaN for a union)
    concepts: list[QueryResult] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """``cos(r_K, q_c) / max_score``: the share of the full-basis score reached."""
        return self.reached / self.max_score if self.max_score else float("nan")

    @property
    def heads_used(self) -> list[str]:
        return list(dict.fromkeys(e.head for e in self.entries))

    @property
    def pcs(self) -> list[tuple[str, int]]:
        return [(e.head, e.pc) for e in self.entries]

    def selection(self, value: float = 1.0) -> PCSelection:
        """The chosen PCs as a :class:`PCSelection` over the heads they belong to (weight ``value``);
        ``keep``/``remove`` extend it to every analysed head."""
        w: dict[str, Tensor] = {}
        for e in self.entries:
            w.setdefault(e.head, [])
            w[e.head].append(e.pc)
        return PCSelection({head: _onehot(self._k[head], pcs, value) for head, pcs in w.items()})

    _k: dict = field(default_factory=dict, repr=False)
    model: ModelIdentity | None = None

    def _header(self) -> str:
        if self.concepts:
            return (
                f"{self.query}: {len(self.entries)} PCs (union of {len(self.concepts)} concepts), "
                f"{len(self.heads_used)} heads"
            )
        return (
            f"{self.query}: {len(self.entries)} PCs, max score {self.max_score:.3f}, reached "
            f"{100 * self.fraction:.1f}%, {len(self.heads_used)} heads"
        )

    def rows(self) -> list[list[str]]:
        return [
            [str(r + 1), e.head, str(e.pc), f"{e.coefficient:+.3f}", f"{e.cumulative_cos:.3f}", e.first, e.second]
            for r, e in enumerate(self.entries)
        ]

    HEADER = ["rank", "head", "PC", "a", "cos(r_K, q)", "texts (stronger side)", "texts (other side)"]

    # ---- the Result protocol
    def _title(self) -> str:
        return self._header()

    def _table(self) -> tuple[list[str], list[list]]:
        return list(self.HEADER), [
            [r + 1, e.head, e.pc, e.coefficient, e.cumulative_cos, e.first, e.second]
            for r, e in enumerate(self.entries)
        ]

    def _repr_sizes(self) -> dict:
        return {"query": repr(self.query[:60]), "pcs": len(self.entries), "heads": len(self.heads_used)}

    def _state(self) -> tuple[dict, dict]:
        tensors, fields = super()._state()
        fields["entries"] = [asdict(e) for e in self.entries]
        fields["concepts"] = [c._state()[1] for c in self.concepts]
        return tensors, fields

    @classmethod
    def _from_state(cls, tensors: dict, fields: dict, model: ModelIdentity | None) -> QueryResult:
        fields = dict(
            fields,
            entries=[QueryEntry(**e) for e in fields["entries"]],
            concepts=[cls._from_state({}, c, model) for c in fields["concepts"]],
        )
        return cls(**fields, model=model)

    def to_markdown(self) -> str:
        """Deprecated: a markdown table; use :meth:`summary` (text) or :meth:`to_csv`."""
        deprecated_alias("QueryResult.to_markdown()", "summary() or to_csv()")
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines = [
            f"**{esc(self._header())}**",
            "",
            "| " + " | ".join(self.HEADER) + " |",
            "|" + "---|" * len(self.HEADER),
        ]
        lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in self.rows()]
        return "\n".join(lines)


def _onehot(k: int, pcs: Iterable[int], value: float) -> Tensor:
    w = torch.zeros(k, dtype=torch.float64)
    w[list(pcs)] = value
    return w


class QuerySystem:
    """Ranks the PCs of a :class:`~hookedclip.methods.pclens.PCLensResult` for queries.

    Args:
        result: the fitted PCLens result (``text_mean`` / ``image_mean`` centre the queries).
        model: embeds text and image queries; checked against the result. Optional when only
            :meth:`query_vector` is used.
        max_pcs_per_head: consider only the first PCs of each head.
    """

    def __init__(self, result: PCLensResult, model=None, max_pcs_per_head: int | None = None) -> None:
        if model is not None:
            result.check_model(model)
        self.result, self.model = result, model
        refs, v, d = [], [], []
        for label, pca in result.heads.items():
            k = pca.k if max_pcs_per_head is None else min(pca.k, max_pcs_per_head)
            refs += [(label, i) for i in range(k)]
            v.append(pca.components[:k])
            d.append((pca.projector @ pca.components)[:k])  # e_i Π V_k: PC i's reconstruction direction
        if not refs:
            raise ValueError("the PCLens result has no retained PCs to query")
        self.refs = refs
        self.basis: Float[Tensor, "p d"] = torch.cat(v).to(torch.float64)
        self.directions: Float[Tensor, "p d"] = torch.cat(d).to(torch.float64)

    # ---- queries
    def query_vector(
        self,
        q: Float[Tensor, " d"],
        top_k: int = 10,
        approx: float = 0.9,
        name: str = "query",
        centre: Float[Tensor, " d"] | None = None,
    ) -> QueryResult:
        """Rank PCs for an embedding ``q``; ``centre`` (default none) is subtracted first."""
        q = q.to(self.basis).flatten()
        if q.shape[0] != self.basis.shape[1]:
            raise ValueError(f"query has {q.shape[0]} dimensions; the PCs live in d'={self.basis.shape[1]}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        q_c = q - centre.to(q) if centre is not None else q
        a = self.basis @ q_c  # [P]
        order = a.abs().argsort(descending=True, stable=True)
        full = a @ self.directions
        max_score = _cos(full, q_c)
        cumulative = (a[order, None] * self.directions[order]).cumsum(0)  # r_K for K = 1..P
        cos = torch.nn.functional.cosine_similarity(cumulative, q_c[None].expand_as(cumulative), dim=1)
        n = _stopping_point(cos, max_score, top_k, approx)
        entries = [self._entry(int(order[j]), float(a[order[j]]), float(cos[j])) for j in range(n)]
        out = QueryResult(name, entries, max_score, float(cos[n - 1]), model=self.result.model)
        out._k = {label: pca.k for label, pca in self.result.heads.items()}
        return out

    def query_text(self, text: str, top_k: int = 10, approx: float = 0.9) -> QueryResult:
        """Rank PCs for a text, centred by the label pool's mean ``μ_text``."""
        from hookedclip.zeroshot import embed_texts

        self._need_model()
        if self.result.text_mean is None:
            raise ValueError("text queries are centred by the label pool's mean: fit or label the result with texts")
        q = embed_texts(self.model, [text])[0]
        return self.query_vector(q, top_k, approx, text, self.result.text_mean)

    def query_image(
        self, image: Float[Tensor, "channel height width"], top_k: int = 10, approx: float = 0.9, name: str = "image"
    ) -> QueryResult:
        """Rank PCs for one preprocessed image, centred by the mean image embedding ``μ_images``."""
        self._need_model()
        if self.result.image_mean is None:
            raise ValueError("image queries are centred by the mean image embedding: fit with embedding statistics")
        with torch.no_grad():
            q = self.model.encode_image(image[None].to(self.model.device, self.model.dtype), normalize=True)[0]
        return self.query_vector(q, top_k, approx, name, self.result.image_mean)

    def query_texts(self, texts: Sequence[str], top_k: int = 10, approx: float = 0.9) -> QueryResult:
        """Several concepts: the union of their top lists, de-duplicated by (head, PC), first
        occurrence kept."""
        results = [self.query_text(t, top_k, approx) for t in texts]
        return union(results)

    # ---- helpers
    def _need_model(self) -> None:
        if self.model is None:
            raise ValueError("this QuerySystem has no model to embed queries: pass model=... or use query_vector")

    def _entry(self, p: int, a: float, cos: float) -> QueryEntry:
        label, i = self.refs[p]
        pca = self.result.heads[label]
        first = second = ""
        if pca.pos_idx is not None and pca.texts is not None:
            first, second = pca.label_of(i, 2).cells(coefficients=False)
        return QueryEntry(label, i, a, cos, first, second)


def _cos(x: Tensor, y: Tensor) -> float:
    denom = float(x.norm() * y.norm())
    return float(x @ y) / denom if denom > 0 else 0.0


def _stopping_point(cos: Tensor, max_score: float, top_k: int, approx: float) -> int:
    """The number of PCs taken: the first ``K`` with ``cos_K / max_score > approx``, else ``top_k``."""
    limit = min(top_k, cos.shape[0])
    if max_score > 0:
        reached = torch.nonzero(cos[:limit] / max_score > approx).flatten()
        if reached.numel():
            return int(reached[0]) + 1
    return limit


def union(results: Sequence[QueryResult]) -> QueryResult:
    """De-duplicated union of several queries' PCs (first occurrence kept, in query order)."""
    if not results:
        raise ValueError("no query results to combine")
    seen, entries = set(), []
    for r in results:
        for e in r.entries:
            if (e.head, e.pc) not in seen:
                seen.add((e.head, e.pc))
                entries.append(e)
    out = QueryResult(
        " + ".join(r.query for r in results), entries, float("nan"), float("nan"), list(results), model=results[0].model
    )
    out._k = dict(results[0]._k)
    return out


__all__ = ["QueryEntry", "QueryResult", "QuerySystem", "union"]
