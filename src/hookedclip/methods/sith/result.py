"""``SithResult``: every singular vector of one layer's heads, explained by concepts.

For each head ``h`` and singular vector ``i`` (σ-descending) and each side that was explained,
the result holds the ``k`` chosen concepts in selection order with their coefficients and the
fidelity of the explanation (the cosine of the reconstruction ``Σ c_t d_t`` with the target in
the joint space). The sides are SITH's two conventions: ``"right"``, the write directions
``v_i`` (what the head adds to the residual stream, the object of every edit), and ``"left"``,
the read directions ``u_i`` mapped the same way (a heuristic: they live in the head's input
space).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from jaxtyping import Float, Int
from torch import Tensor

from hookedclip.axis_size import axis_size
from hookedclip.identity import ModelIdentity, model_label
from hookedclip.methods.sith._layer_heads import LayerHeads
from hookedclip.results import Result, finish_figure, new_figure

SIDES = ("right", "left")


@dataclass(repr=False)
class SithResult(LayerHeads, Result):
    """One layer's heads, each singular vector explained by ``k`` concepts.

    Attributes:
        S: ``σ [head, r]`` (descending per head).
        indices: ``[side, head, r, k]`` dictionary rows in selection order (``-1``: none).
        coefficients: ``[side, head, r, k]`` non-negative, aligned with ``indices``.
        fidelity: ``[side, head, r]`` cosine of the reconstruction with the target.
        concepts: the dictionary's concept names.
        sides: which side each leading index is (``"right"``, ``"left"``).
        layer, method, lam, k, fold_ln, center: how it was computed.
        model: the identity of the model.
    """

    _kind = "sith"
    _tensor_fields = ("S", "indices", "coefficients", "fidelity")
    _json_fields = ("concepts", "sides", "layer", "method", "lam", "fold_ln", "center")

    S: Float[Tensor, "head r"]
    indices: Int[Tensor, "side head r k"]
    coefficients: Float[Tensor, "side head r k"]
    fidelity: Float[Tensor, "side head r"]
    concepts: list[str]
    sides: list[str]
    layer: int
    method: str = "comp"
    lam: float = 0.3
    fold_ln: bool = True
    center: bool = True
    model: ModelIdentity | None = None

    k = axis_size("indices", -1, "Concepts per vector.")

    def _side(self, side: str) -> int:
        if side not in self.sides:
            raise ValueError(f"side {side!r} was not explained; this result has {self.sides}")
        return self.sides.index(side)

    def explanation(self, head: int, i: int, side: str = "right") -> list[tuple[str, float]]:
        """``[(concept, coefficient), ...]`` of vector ``i`` of ``head`` in selection order,
        without the chosen concepts whose coefficient is zero."""
        s = self._side(side)
        pairs = zip(self.indices[s, head, i].tolist(), self.coefficients[s, head, i].tolist())
        return [(self.concepts[j], c) for j, c in pairs if j >= 0 and c > 0]

    def top_concepts(self, head: int, i: int, side: str = "right", n: int = 1) -> list[str]:
        """The ``n`` concepts with the largest coefficients (ties: the earlier chosen first)."""
        ranked = sorted(self.explanation(head, i, side), key=lambda pair: -pair[1])
        return [concept for concept, _ in ranked[:n]]

    def select(
        self, match: Iterable[str] | Callable[[str], bool], side: str = "right", top: int = 1
    ) -> list[tuple[str, int]]:
        """The vectors ``(head label, i)`` among whose ``top`` largest-coefficient concepts one
        matches: ``match`` is a set of concept names (each must be in the dictionary) or a
        predicate, e.g. ``lambda c: "background" in c``."""
        if callable(match):
            wanted = match
        else:
            names = set(match)
            missing = sorted(names - set(self.concepts))
            if missing:
                raise KeyError(f"{missing} not in the dictionary; name concepts it holds (e.g. {self.concepts[0]!r})")
            wanted = names.__contains__
        return [
            (label, i)
            for h, label in enumerate(self.labels)
            for i in range(self.rank)
            if any(wanted(c) for c in self.top_concepts(h, i, side, top))
        ]

    # ---- the Result protocol
    def _title(self) -> str:
        return (
            f"SITH of layer {self.layer} of {model_label(self.model)}: {self.n_heads} heads x {self.rank} "
            f"vectors, {self.method} (lam={self.lam:g}, k={self.k}) over {len(self.concepts)} concepts, sides "
            f"{'/'.join(self.sides)}; mean fidelity "
            + ", ".join(f"{side} {float(self.fidelity[s].mean()):.3f}" for s, side in enumerate(self.sides))
        )

    def _table(self) -> tuple[list[str], list[list]]:
        rows = []
        for s, side in enumerate(self.sides):
            for h, label in enumerate(self.labels):
                for i in range(self.rank):
                    sigma, fid = float(self.S[h, i]), float(self.fidelity[s, h, i])
                    for step, (j, c) in enumerate(
                        zip(self.indices[s, h, i].tolist(), self.coefficients[s, h, i].tolist())
                    ):
                        concept = self.concepts[j] if j >= 0 else ""
                        rows.append([label, i, sigma, side, step, concept, c, fid])
        return ["head", "index", "singular_value", "side", "step", "concept", "coefficient", "fidelity"], rows

    def _repr_sizes(self) -> dict:
        return {"layer": self.layer, "heads": self.n_heads, "rank": self.rank, "k": self.k, "sides": self.sides}

    def plot(self, path: str | Path | None = None, head: int | None = None, n: int = 8, side: str = "right"):
        """Singular-value bars of one head's first ``n`` vectors, each labelled with its concepts
        (``head=None``: the mean fidelity of every head instead). A ``Figure``; written to ``path``."""
        if head is None:
            return self._fidelity_plot(path)
        n = min(n, self.rank)
        fig, ax = new_figure(9, 0.4 * n + 1.0)
        ax.barh(range(n), self.S[head, :n].tolist(), color="#4c72b0")
        names = []
        for i in range(n):
            text = ", ".join(f"{c} ({w:.2f})" for c, w in self.explanation(head, i, side)[:4]) or "(no concept)"
            names.append(f"v{i}: {text}")
        ax.invert_yaxis()
        ax.set_yticks(range(n), names, fontsize=7)
        ax.set_xlabel("singular value σ_i")
        ax.set_title(f"{self.labels[head]}: singular values and the concepts of each {side} vector", fontsize=9)
        return finish_figure(fig, path)

    def _fidelity_plot(self, path):
        fig, ax = new_figure(6, 3.2)
        width = 0.8 / len(self.sides)
        for s, side in enumerate(self.sides):
            mean = self.fidelity[s].float().mean(-1).tolist()
            ax.bar([h + s * width for h in range(self.n_heads)], mean, width=width, label=side)
        ax.set_xticks([h + 0.4 - width / 2 for h in range(self.n_heads)], self.labels, rotation=90, fontsize=7)
        ax.set_ylabel("mean fidelity (cosine)")
        ax.set_ylim(0, 1)
        ax.set_title(f"Fidelity of the explanations, layer {self.layer} ({self.method}, k={self.k})")
        ax.legend(fontsize=7)
        return finish_figure(fig, path)
