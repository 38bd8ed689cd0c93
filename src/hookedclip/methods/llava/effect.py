"""The effect of the tower's components on a LLaVA's answers, next to CLIP's own zero-shot
readout of the same ablated stream.

Each selection of components (a layer range, a list of heads, an MLP, a PCLens or SITH pick
given as component labels) is mean-ablated in total mode through :mod:`hookedclip.ablation`,
with means per token position: later blocks, the features LLaVA reads and CLIP's class-token
embedding all see the ablation. For each selection we measure

- the LLaVA's answer accuracy (Wilson 95% interval) and the mean change in the log-probability
  of the correct answer (mean ± 1.96 standard errors over images);
- CLIP's zero-shot accuracy on the same images under the same ablation (its class token, all
  blocks, ``ln_post`` and the projection), when a zero-shot classifier is given.

:func:`layer_sweep` builds the reference experiment's selections: the attention, the MLPs, or
both, of every block below ``l``, for a list of ``l``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hookedclip import ablation
from hookedclip.components import select
from hookedclip.identity import ModelIdentity, model_identity
from hookedclip.methods.llava.tower import hooked_vision_tower
from hookedclip.results import Result, finish_figure, new_figure
from hookedclip.zeroshot import ZeroShotClassifier, accuracy_interval

#: ``answer(images) -> (answer index [batch] (-1: none of the answers), log p of each answer [batch, n_answers])``
AnswerFn = Callable[[Tensor], tuple[Tensor, Tensor]]
KINDS = ("attn", "mlp", "both")


@dataclass(repr=False)
class AblationEffects(Result):
    """One row per selection (``names``; ``"none"`` is the clean run): LLaVA's answer accuracy
    with its interval, the mean change of the correct answer's log-probability with its
    half-width, and CLIP's zero-shot accuracy with its interval (NaN without a classifier).
    ``kinds`` / ``layers`` are set for :func:`layer_sweep` rows (``kind``, ``l``)."""

    _kind = "llava_ablation_effects"
    _tensor_fields = ("llm_accuracy", "llm_interval", "logp_change", "logp_halfwidth", "clip_accuracy", "clip_interval")
    _json_fields = ("names", "kinds", "layers", "n_images")

    names: list[str]
    llm_accuracy: Tensor
    llm_interval: Tensor
    logp_change: Tensor
    logp_halfwidth: Tensor
    clip_accuracy: Tensor
    clip_interval: Tensor
    n_images: int
    kinds: list[str | None]
    layers: list[int | None]
    model: ModelIdentity | None = None

    def _title(self) -> str:
        return f"LLaVA answers and CLIP zero-shot under mean ablation ({self.n_images} images, {len(self.names)} rows)"

    def _table(self) -> tuple[list[str], list[list]]:
        header = ["ablated", "llm_accuracy", "llm_low", "llm_high", "logp_change", "logp_pm", "clip_accuracy"]
        header += ["clip_low", "clip_high"]
        rows = []
        for i, name in enumerate(self.names):
            rows.append(
                [name, float(self.llm_accuracy[i]), *self.llm_interval[i].tolist(), float(self.logp_change[i])]
                + [float(self.logp_halfwidth[i]), float(self.clip_accuracy[i]), *self.clip_interval[i].tolist()]
            )
        return header, rows

    def _repr_sizes(self) -> dict:
        return {"rows": len(self.names), "images": self.n_images}

    def row(self, name: str) -> dict[str, float]:
        i = self.names.index(name)
        return dict(zip(self._table()[0][1:], self._table()[1][i][1:]))

    def plot(self, path: str | Path | None = None, title: str = "Mean-ablating every block below l"):
        """Accuracy against ``l`` per kind: LLaVA (solid, with its interval) and CLIP zero-shot (dashed)."""
        fig, ax = new_figure(6.8, 3.6)
        colours = {"attn": "tab:blue", "mlp": "tab:orange", "both": "tab:green"}
        for kind in dict.fromkeys(k for k in self.kinds if k is not None):
            idx = [i for i, k in enumerate(self.kinds) if k == kind]
            x = [self.layers[i] for i in idx]
            llm = 100 * self.llm_accuracy[idx]
            low, high = 100 * self.llm_interval[idx, 0], 100 * self.llm_interval[idx, 1]
            ax.plot(x, llm, "-", marker="o", markersize=3.5, color=colours[kind], label=f"LLaVA, {kind}")
            ax.fill_between(x, low, high, color=colours[kind], alpha=0.15, linewidth=0)
            if not torch.isnan(self.clip_accuracy[idx]).all():
                ax.plot(
                    x,
                    100 * self.clip_accuracy[idx],
                    "--",
                    marker="s",
                    markersize=3,
                    color=colours[kind],
                    label=f"CLIP zero-shot, {kind}",
                )
        ax.set_xticks(sorted({l for l in self.layers if l is not None}))
        ax.set_xlabel("l (blocks 0 .. l-1 mean-ablated)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 102)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        return finish_figure(fig, path)


def layer_selections(n_layers: int, layers: Sequence[int], kinds: Sequence[str] = KINDS) -> dict[str, list[str]]:
    """``{"attn<l": heads of blocks 0..l-1, "mlp<l": their MLPs, "both<l": both}`` for each ``l``
    (``l = 0`` ablates nothing)."""
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown kinds {bad}; choose from {KINDS}")
    out_of_range = [l for l in layers if not 0 <= l <= n_layers]
    if out_of_range:
        raise ValueError(f"layers {out_of_range} are out of range: l runs over 0..{n_layers} (blocks 0..l-1 ablated)")
    out = {}
    for kind in kinds:
        for l in layers:
            parts = [f"L{j}" for j in range(l)] if kind in ("attn", "both") else []
            parts += [f"mlp{j}" for j in range(l)] if kind in ("mlp", "both") else []
            out[f"{kind}<{l}"] = parts
    return out


@torch.no_grad()
def ablation_effects(
    llava_model: nn.Module,
    hooked,
    answer: AnswerFn,
    images: Float[Tensor, "n channel height width"],
    labels: Int[Tensor, " n"],
    selections: Mapping[str, Sequence[str] | Callable[[object], AbstractContextManager]],
    means: Mapping[str, Tensor] | None = None,
    reference=None,
    classifier: ZeroShotClassifier | None = None,
    batch_size: int = 256,
) -> AblationEffects:
    """Mean-ablate each selection (total mode, per-position means) and measure LLaVA's answers
    and CLIP's zero-shot accuracy on the same ablated stream.

    Args:
        llava_model: the ``transformers`` LLaVA; ``answer`` runs it.
        hooked: the :class:`HookedCLIP` with its tower's weights (the toy CLIP for the toy LLaVA).
        answer: ``images -> (answer index [batch], log p of each possible answer [batch, n_answers])``.
        images, labels: the evaluation set; ``labels`` index the answers (and the classifier's classes).
        selections: ``{name: component labels}``, e.g. :func:`layer_selections`, ``{"L2H3": ["L2H3"]}``
            (mean-ablated), or ``{name: hooked -> context}`` for any other total-mode engine context
            (a PCLens or SITH edit, ``lambda m: ablation.zero_ablate(m, ["L2"])``).
        means: per-position means ``{label: [pos, d]}`` from ``ablation.component_means(hooked,
            batches, mode="total")`` or :func:`~hookedclip.methods.llava.means_from_store`, or
            ``reference`` batches to compute them from (images other than the evaluation set).
        classifier: CLIP's zero-shot classifier over the same classes (``None``: CLIP not measured).
    """
    labels = torch.as_tensor(labels)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    listed = [list(parts) for parts in selections.values() if not callable(parts)]
    wanted = sorted({str(c) for parts in listed for c in select(hooked, parts)})
    if means is None:
        if reference is None:
            raise ValueError(
                "give means= (ablation.component_means(hooked, batches, mode='total')) or reference= batches"
            )
        means = ablation.component_means(hooked, reference, components=wanted, mode="total") if wanted else {}
    rows = {"none": []} | {name: parts for name, parts in selections.items() if name != "none"}
    with hooked_vision_tower(llava_model, hooked):
        clean = _measure(hooked, answer, images, labels, classifier, batch_size)
        results = {}
        for name, parts in rows.items():
            if not callable(parts) and not parts:
                results[name] = clean
                continue
            edit = parts(hooked) if callable(parts) else ablation.mean_ablate(hooked, list(parts), means, mode="total")
            with edit:
                results[name] = _measure(hooked, answer, images, labels, classifier, batch_size)
    return _effects(results, clean, labels, selections)


def _measure(hooked, answer: AnswerFn, images, labels, classifier, batch_size) -> dict[str, Tensor]:
    answers, logp, clip = [], [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        a, lp = answer(batch)
        answers.append(a)
        logp.append(lp.gather(-1, labels[start : start + batch_size, None]).squeeze(-1))
        if classifier is not None:
            clip.append(classifier.predict(hooked.encode_image(batch)).cpu())
    out = {"correct": torch.cat(answers).cpu() == labels, "logp": torch.cat(logp).double().cpu()}
    if classifier is not None:
        out["clip_correct"] = torch.cat(clip) == labels
    return out


def _effects(results: dict, clean: dict, labels: Tensor, selections) -> AblationEffects:
    n = labels.shape[0]
    names = list(results)
    llm_acc, llm_int, change, half, clip_acc, clip_int = [], [], [], [], [], []
    for name in names:
        r = results[name]
        k = int(r["correct"].sum())
        llm_acc.append(k / n)
        llm_int.append(accuracy_interval(k, n))
        delta = r["logp"] - clean["logp"]
        change.append(float(delta.mean()))
        half.append(1.96 * float(delta.std()) / math.sqrt(n) if n > 1 else float("nan"))
        if "clip_correct" in r:
            c = int(r["clip_correct"].sum())
            clip_acc.append(c / n)
            clip_int.append(accuracy_interval(c, n))
        else:
            clip_acc.append(float("nan"))
            clip_int.append((float("nan"), float("nan")))
    kinds, layers = [], []
    for name in names:
        kind, _, l = name.partition("<")
        is_sweep = kind in KINDS and l.isdigit()
        kinds.append(kind if is_sweep else None)
        layers.append(int(l) if is_sweep else None)
    return AblationEffects(
        names,
        torch.tensor(llm_acc, dtype=torch.float64),
        torch.tensor(llm_int, dtype=torch.float64),
        torch.tensor(change, dtype=torch.float64),
        torch.tensor(half, dtype=torch.float64),
        torch.tensor(clip_acc, dtype=torch.float64),
        torch.tensor(clip_int, dtype=torch.float64),
        n,
        kinds,
        layers,
    )


def layer_sweep(
    llava_model: nn.Module,
    hooked,
    answer: AnswerFn,
    images: Tensor,
    labels: Tensor,
    layers: Sequence[int],
    kinds: Sequence[str] = KINDS,
    **kwargs,
) -> AblationEffects:
    """:func:`ablation_effects` over :func:`layer_selections`: the attention, MLPs or both of every
    block below ``l``, for each ``l`` in ``layers``; ``plot()`` draws LLaVA's and CLIP's curves."""
    selections = layer_selections(hooked.cfg.vision.layers, layers, kinds)
    effects = ablation_effects(llava_model, hooked, answer, images, labels, selections, **kwargs)
    effects.model = model_identity(hooked)
    return effects


__all__ = ["KINDS", "AblationEffects", "AnswerFn", "ablation_effects", "layer_selections", "layer_sweep"]
