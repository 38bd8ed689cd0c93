"""Attention vs MLP: how much of the features LLaVA reads each layer writes, for the patch tokens
LLaVA reads against the class token CLIP's own readout pools.

For a token ``t`` of the decomposed hidden state ``r_t``, layer ``l``'s attention share is
``‖Σ_h a^{l,h}_t‖ / ‖r_t‖`` and its MLP share ``‖m^l_t‖ / ‖r_t‖`` (the embedding slot ``m⁰``
is reported as layer ``embed``). Shares are averaged over images and, for patch tokens, over
positions, with their standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hookedclip.axis_size import axis_size
from hookedclip.components import MLP, Embed, Head
from hookedclip.decompose import ComponentStack
from hookedclip.identity import ModelIdentity, model_label
from hookedclip.results import Result, finish_figure, new_figure

TOKENS = ("patch", "cls")


@dataclass(repr=False)
class NormShares(Result):
    """``mean[token, kind, layer]`` and ``std[token, kind, layer]``: ``token`` is ``"patch"`` or
    ``"cls"``, ``kind`` is ``"attn"`` or ``"mlp"`` and ``layer`` runs over the blocks before the
    decomposed hidden state; ``embed_mean[token]`` / ``embed_std[token]`` are the embedding slot's."""

    _kind = "llava_norm_shares"
    _tensor_fields = ("mean", "std", "embed_mean", "embed_std")
    _json_fields = ("layer",)

    mean: Tensor
    std: Tensor
    embed_mean: Tensor
    embed_std: Tensor
    layer: int  # the hidden_states index decomposed
    model: ModelIdentity | None = None

    n_layers = axis_size("mean", -1, "How many blocks.")

    def total(self, token: str = "patch") -> dict[str, float]:
        """Summed shares over layers per kind: ``{"attn": ..., "mlp": ...}``."""
        if token not in TOKENS:
            raise ValueError(f"token must be one of {TOKENS}, got {token!r}")
        i = TOKENS.index(token)
        return {"attn": float(self.mean[i, 0].sum()), "mlp": float(self.mean[i, 1].sum())}

    def dominant(self, token: str = "patch") -> str:
        """``"mlp"`` or ``"attn"``: whose summed share over layers is larger at ``token``."""
        total = self.total(token)
        return max(total, key=total.get)

    def _title(self) -> str:
        return (
            f"Attention vs MLP norm shares of hidden_states[{self.layer}] on {model_label(self.model)}: "
            f"patch tokens dominated by {self.dominant('patch')}, class token by {self.dominant('cls')}"
        )

    def _table(self) -> tuple[list[str], list[list]]:
        header = ["layer", "token", "attn_mean", "attn_std", "mlp_mean", "mlp_std"]
        rows = [
            ["embed", token, None, None, float(self.embed_mean[i]), float(self.embed_std[i])]
            for i, token in enumerate(TOKENS)
        ]
        for layer in range(self.n_layers):
            for i, token in enumerate(TOKENS):
                m, s = self.mean[i, :, layer].tolist(), self.std[i, :, layer].tolist()
                rows.append([layer, token, m[0], s[0], m[1], s[1]])
        return header, rows

    def _repr_sizes(self) -> dict:
        return {"layers": self.n_layers, "feature_layer": self.layer}

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """Shares per layer: attention and MLP, patch tokens (solid, ± std band) against the class
        token (dashed)."""
        fig, ax = new_figure(6.8, 3.4)
        x = list(range(self.n_layers))
        for k, (kind, colour) in enumerate((("attention", "tab:blue"), ("MLP", "tab:orange"))):
            for i, (token, style) in enumerate((("patch tokens", "-"), ("class token", "--"))):
                mean, std = self.mean[i, k].numpy(), self.std[i, k].numpy()
                ax.plot(x, mean, style, color=colour, marker="o", markersize=3.5, label=f"{kind}, {token}")
                if i == 0:
                    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
        ax.set_xticks(x)
        ax.set_xlabel("layer")
        ax.set_ylabel("‖contribution‖ / ‖feature‖")
        ax.set_title(title or f"What writes hidden_states[{self.layer}]: attention vs MLP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        return finish_figure(fig, path)


def norm_shares(stack: ComponentStack, layer: int | None = None) -> NormShares:
    """Attention and MLP norm shares per layer from a per-token decomposition
    (:func:`~hookedclip.methods.llava.decompose_features`, ``[component, batch, pos, d]``)."""
    if stack.tensor.ndim != 4:
        raise ValueError("norm_shares needs per-token rows [component, batch, pos, d]: use llava.decompose_features")
    layers = sorted({c.layer for c in stack.components if isinstance(c, (Head, MLP))})
    n = len(layers)
    if layers != list(range(n)) or not any(isinstance(c, Embed) for c in stack.components):
        raise ValueError(
            "norm_shares needs every component (embed, every head, every MLP): decompose with the defaults"
        )
    feature_norm = stack.sum().norm(dim=-1).double().clamp_min(1e-12)  # [batch, pos]
    attn = torch.zeros(n, *stack.tensor.shape[1:], dtype=stack.tensor.dtype)
    mlp = torch.zeros_like(attn)
    embed = None
    for row, comp in zip(stack.tensor, stack.components):
        if isinstance(comp, Head):
            attn[comp.layer] += row.detach().cpu()
        elif isinstance(comp, MLP):
            mlp[comp.layer] = row.detach().cpu()
        elif isinstance(comp, Embed):
            embed = row.detach().cpu()
    ratios = torch.stack([attn.norm(dim=-1), mlp.norm(dim=-1)]).double() / feature_norm  # [kind, layer, batch, pos]
    embed_ratio = embed.norm(dim=-1).double() / feature_norm
    mean = torch.stack([ratios[:, :, :, 1:].flatten(2).mean(-1), ratios[:, :, :, 0].mean(-1)])
    std = torch.stack([ratios[:, :, :, 1:].flatten(2).std(-1), ratios[:, :, :, 0].std(-1)])
    embed_mean = torch.stack([embed_ratio[:, 1:].mean(), embed_ratio[:, 0].mean()])
    embed_std = torch.stack([embed_ratio[:, 1:].std(), embed_ratio[:, 0].std()])
    return NormShares(mean, std, embed_mean, embed_std, n if layer is None else layer, model=stack.model)


__all__ = ["NormShares", "norm_shares"]
