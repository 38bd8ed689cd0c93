"""The :class:`Attribution` result: attributions stored over each image's active latents only.

An image activates ``k`` latents (a class-token autoencoder) or the union of every patch token's
``k`` (a spatial one), out of ``d_sae``; ``R`` is kept as ``R_active [batch, n, m]`` at the
latents ``latents [batch, m]``, where ``active [batch, m]`` marks the real entries (rows with
fewer active latents are padded). :attr:`Attribution.R` gives the dense ``[batch, n, d_sae]``
tensor, exactly zero at inactive latents.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from hookedclip.axis_size import axis_size
from hookedclip.identity import ModelIdentity, model_label
from hookedclip.results import Result, finish_figure, new_figure


@dataclass
class AttributionPart:
    """Attributions over each image's active latents, without names or settings: what one batch
    of images gives (:class:`Attribution` adds them). ``R_active [batch, n, m]`` at ``latents
    [batch, m]`` (``active`` marks real entries), their ``activations [batch, m]``, ``R_error`` and
    ``y [batch, n]``; these are the tensors an :class:`Attribution` saves."""

    R_active: Float[Tensor, "batch n m"]
    latents: Int[Tensor, "batch m"]
    active: Bool[Tensor, "batch m"]
    activations: Float[Tensor, "batch m"]
    R_error: Float[Tensor, "batch n"]
    y: Float[Tensor, "batch n"]

    @property
    def R(self) -> Float[Tensor, "batch n m"]:
        """Deprecated: ``R_active``, the attributions at the active latents (on an
        :class:`Attribution`, ``R`` is the dense ``[batch, n, d_sae]`` tensor)."""
        warnings.warn("AttributionPart.R is now AttributionPart.R_active", DeprecationWarning, stacklevel=2)
        return self.R_active


def active_latents(mask: Bool[Tensor, "batch d_sae"]) -> tuple[Int[Tensor, "batch m"], Bool[Tensor, "batch m"]]:
    """Each row's active latent indices (ascending), padded to the longest row, and the mask of real entries."""
    m = max(int(mask.sum(-1).max()), 1) if mask.numel() else 1
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[:, :m]  # active first, by index
    return order, mask.gather(-1, order)


def check_labels(labels: Sequence[str] | None, d_sae: int) -> list[str] | None:
    """``labels`` as strings, one per latent (``d_sae`` of them), or ``None``; another count raises."""
    if labels is None:
        return None
    labels = [str(x) for x in labels]
    if len(labels) != d_sae:
        raise ValueError(f"{len(labels)} labels for an autoencoder of {d_sae} latents: give one label per latent")
    return labels


def _pad(x: Tensor, m: int, value=0) -> Tensor:
    pad = m - x.shape[-1]
    return x if pad == 0 else torch.nn.functional.pad(x, (0, pad), value=value)


@dataclass(repr=False)
class Attribution(Result, AttributionPart):
    """Act×Grad attributions of ``n`` outputs (prompts or classes) of ``batch`` images.

    ``R_active [batch, n, m]`` at ``latents [batch, m]`` (``active`` marks real entries; the
    module docstring), ``activations [batch, m]`` (summed over the patch tokens for a spatial
    autoencoder), ``R_error [batch, n]`` (the error node), ``y [batch, n]`` (the outputs);
    ``texts``: the outputs' names, ``labels``: one per latent or ``None``; ``output``,
    ``splice`` and ``method`` say how it was computed.
    """

    _kind = "sae_attribution"
    _tensor_fields = tuple(f.name for f in dataclasses.fields(AttributionPart))
    _json_fields = ("texts", "labels", "output", "splice", "method", "d_sae")

    texts: list[str]
    labels: list[str] | None
    output: str
    splice: str
    method: str
    d_sae: int
    model: ModelIdentity | None = None

    @classmethod
    def concat(cls, parts: Sequence[AttributionPart], **fields) -> Attribution:
        m = max(p.latents.shape[-1] for p in parts)
        return cls(
            R_active=torch.cat([_pad(p.R_active, m) for p in parts]),
            latents=torch.cat([_pad(p.latents, m) for p in parts]),
            active=torch.cat([_pad(p.active, m, False) for p in parts]),
            activations=torch.cat([_pad(p.activations, m) for p in parts]),
            R_error=torch.cat([p.R_error for p in parts]),
            y=torch.cat([p.y for p in parts]),
            **fields,
        )

    # ---- dense views
    @property
    def R(self) -> Float[Tensor, "batch n d_sae"]:
        """The dense attributions, exactly zero at every inactive latent."""
        dense = torch.zeros(
            *self.R_active.shape[:2], self.d_sae, dtype=self.R_active.dtype, device=self.R_active.device
        )
        index = self.latents.unsqueeze(1).expand_as(self.R_active)
        return dense.scatter_add(-1, index, self.R_active * self.active.unsqueeze(1))

    @property
    def a(self) -> Float[Tensor, "batch d_sae"]:
        """The dense activations ``a [batch, d_sae]``."""
        dense = torch.zeros(self.latents.shape[0], self.d_sae, dtype=self.activations.dtype)
        return dense.to(self.activations.device).scatter_add(-1, self.latents, self.activations * self.active)

    n_images = axis_size("y", 0, "How many images.")

    # ---- top latents
    def top(self, n: int = 5, images: Sequence[int] | None = None, texts: Sequence[int] | None = None) -> list[dict]:
        """The ``n`` latents with the largest attribution for each (image, output): dicts with
        ``image, text, rank, latent, label, activation, R, y``."""
        rows = []
        for b in range(self.n_images) if images is None else images:
            for t in range(len(self.texts)) if texts is None else texts:
                scores = torch.where(self.active[b], self.R_active[b, t], torch.tensor(float("-inf")).to(self.R_active))
                order = scores.argsort(descending=True)[: min(n, int(self.active[b].sum()))]
                for rank, i in enumerate(order.tolist()):
                    latent = int(self.latents[b, i])
                    rows.append(
                        dict(
                            image=b,
                            text=self.texts[t],
                            rank=rank + 1,
                            latent=latent,
                            label=self.labels[latent] if self.labels else "",
                            activation=float(self.activations[b, i]),
                            R=float(self.R_active[b, t, i]),
                            y=float(self.y[b, t]),
                        )
                    )
        return rows

    # ---- the Result protocol
    def _title(self) -> str:
        return (
            f"Act×Grad attribution ({self.output}, {self.splice}, {self.method}) on {model_label(self.model)}: "
            f"{self.n_images} images x {len(self.texts)} outputs, {self.d_sae} latents"
        )

    def _table(self) -> tuple[list[str], list[list]]:
        header = ["image", "text", "rank", "latent", "label", "activation", "R", "y"]
        return header, [[row[h] for h in header] for row in self.top(5)]

    def _repr_sizes(self) -> dict:
        return {
            "images": self.n_images,
            "outputs": len(self.texts),
            "d_sae": self.d_sae,
            "max_active": self.latents.shape[1],
        }

    def plot(self, path: str | Path | None = None, image: int = 0, text: int = 0, n: int = 10):
        """The ``n`` largest attributions by magnitude for one (image, output), and the error node."""
        rows = self.top(self.latents.shape[1], images=[image], texts=[text])
        rows = sorted(rows, key=lambda r: -abs(r["R"]))[:n]
        names = [f"#{r['latent']} {r['label']}".strip() for r in rows] + ["error"]
        values = [r["R"] for r in rows] + [float(self.R_error[image, text])]
        fig, ax = new_figure(6.0, 0.32 * len(names) + 1.4)
        colours = ["tab:red" if v > 0 else "tab:blue" for v in values[:-1]] + ["tab:gray"]
        ax.barh(range(len(names)), values, color=colours)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.6)
        ax.set_xlabel(f"R (Act×Grad, {self.output})")
        ax.set_ylabel("latent (largest |R| first)")
        ax.set_title(f"image {image}, {self.texts[text]!r}: y = {float(self.y[image, text]):.3f}", fontsize=9)
        return finish_figure(fig, path)


__all__ = ["Attribution", "AttributionPart", "active_latents", "check_labels"]
