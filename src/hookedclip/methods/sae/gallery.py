"""Top-activating samples of every latent, collected in one streaming pass.

For latent ``j`` and sample ``x`` the statistic is ``m_j(x)``: the code value ``a_j(x)`` for a
class-token autoencoder; for a spatial one, the maximum (``pool="max"``) or the mean
(``pool="mean"``, zeros of inactive tokens included) of ``a_j`` over the patch tokens.

:class:`TopNAccumulator` keeps, per latent, the ``N`` largest statistics and the dataset index
of their samples. Each chunk of rows is appended to the kept block and the ``[N_kept + chunk, H]``
block is cut back to ``N`` rows per column, ordered by value (largest first) and, between equal
values, by sample index (lowest first). That order is total, so the result is the global top
``N`` of the whole stream whatever the batch or chunk sizes (``torch.topk`` alone leaves the
order of ties unspecified, so the cut is a stable sort).

Sources: an :class:`~hookedclip.data.store.ActivationStore` holding the residual stream the
autoencoder reads (:func:`top_activations_from_store`; no model in the loop), or batches of
images run through the model with the autoencoder observing (:func:`top_activations`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip.axis_size import axis_size
from hookedclip.data.batches import iter_images
from hookedclip.identity import ModelIdentity, as_identity, describe_mismatch, model_label, same_model
from hookedclip.methods.sae.model import TopKSAE
from hookedclip.methods.sae.splice import splice, splice_site
from hookedclip.results import Result

Pool = Literal["max", "mean"]
POOLS = ("max", "mean")


def latent_statistic(
    codes: Float[Tensor, "batch *tokens d_sae"], token: str, pool: Pool = "max"
) -> Float[Tensor, "batch d_sae"]:
    """``m_j(x)`` from the codes of a batch: the code itself for a class-token autoencoder
    (``[batch, d_sae]``), the max or mean over the token axis for a spatial one
    (``[batch, tokens, d_sae]``; the mean counts the zeros of inactive tokens)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if token == "cls":
        return codes
    return codes.amax(dim=1) if pool == "max" else codes.mean(dim=1)


class TopNAccumulator:
    """The running per-latent top ``n`` (module docstring): ``update`` with each chunk's
    statistics and sample indices, then read ``values`` and ``indices`` (``[n_kept, d_sae]``,
    ``n_kept = min(n, samples seen)``)."""

    def __init__(self, n: int, d_sae: int, device: str | torch.device = "cpu") -> None:
        if n < 1:
            raise ValueError(f"n = {n}: keep at least one sample per latent")
        self.n, self.d_sae = int(n), int(d_sae)
        self.values = torch.zeros(0, d_sae, dtype=torch.float32, device=device)
        self.indices = torch.zeros(0, d_sae, dtype=torch.int64, device=device)
        self.seen = 0

    def update(self, stats: Float[Tensor, "chunk d_sae"], sample_indices: Int[Tensor, " chunk"]) -> None:
        if stats.ndim != 2 or stats.shape[1] != self.d_sae or stats.shape[0] != len(sample_indices):
            raise ValueError(
                f"expected statistics [chunk, {self.d_sae}] and one sample index per row, got "
                f"{tuple(stats.shape)} and {len(sample_indices)} indices"
            )
        if not torch.isfinite(stats).all():
            raise ValueError("the latent statistics hold NaN or Inf: check the activations and the autoencoder weights")
        device = self.values.device
        stats = stats.detach().to(device, torch.float32)
        rows = torch.as_tensor(sample_indices, dtype=torch.int64, device=device)
        values = torch.cat([self.values, stats])
        indices = torch.cat([self.indices, rows.unsqueeze(1).expand(-1, self.d_sae)])
        # Order by index first, then a stable sort by value: ties keep the lower index first.
        by_index = indices.argsort(dim=0, stable=True)
        values, indices = values.gather(0, by_index), indices.gather(0, by_index)
        order = values.argsort(dim=0, descending=True, stable=True)[: self.n]
        self.values, self.indices = values.gather(0, order), indices.gather(0, order)
        self.seen += len(rows)


@dataclass(repr=False)
class TopActivations(Result):
    """Per latent, the ``N`` samples with the largest statistic ``m_j`` (module docstring).

    ``values [N, d_sae]``: the statistics, largest first; ``indices [N, d_sae]``: the dataset
    indices of their samples (between equal values, the lower index first). ``settings``: the
    autoencoder's layer and token, the pooling, the number of samples seen.
    """

    values: Float[Tensor, "n d_sae"]
    indices: Int[Tensor, "n d_sae"]
    settings: dict = field(default_factory=dict)
    model: ModelIdentity | None = None

    _kind: ClassVar[str] = "sae_top"
    _tensor_fields: ClassVar[tuple[str, ...]] = ("values", "indices")
    _json_fields: ClassVar[tuple[str, ...]] = ("settings",)

    def __post_init__(self) -> None:
        self.model = as_identity(self.model)  # a model or its identity

    n = axis_size("values", 0, "How many top samples per latent (``N``).")
    d_sae = axis_size("values", 1, "How many latents.")

    def top(self, latent: int, n: int | None = None) -> tuple[Float[Tensor, " n"], Int[Tensor, " n"]]:
        """Latent ``latent``'s top ``n`` (default all kept) statistics and sample indices."""
        n = self.n if n is None else min(n, self.n)
        return self.values[:n, latent], self.indices[:n, latent]

    def mean_top(self, n: int | None = None) -> Float[Tensor, " d_sae"]:
        """The mean of each latent's top ``n`` statistics (default all kept)."""
        n = self.n if n is None else min(n, self.n)
        return self.values[:n].mean(0)

    def _title(self) -> str:
        s = self.settings
        return (
            f"Top {self.n} samples of {self.d_sae} latents (layer {s.get('layer')}, {s.get('token')}, "
            f"pool {s.get('pool')}, {s.get('samples')} samples) of {model_label(self.model)}"
        )

    def _table(self) -> tuple[list[str], list[list]]:
        header = ["latent", "max", f"mean top {self.n}", "top indices"]
        means = self.mean_top().tolist()
        rows = [
            [j, f"{float(self.values[0, j]):.4g}", f"{means[j]:.4g}", " ".join(map(str, self.indices[:, j].tolist()))]
            for j in range(self.d_sae)
        ]
        return header, rows

    def _repr_sizes(self) -> dict:
        return {"n": self.n, "latents": self.d_sae}


# ---------------------------------------------------------------------------- from a store
_RESID = re.compile(r"^visual\.blocks\.(\d+)\.hook_resid_post(@0)?$")


def store_target(store, sae: TopKSAE, n_layers: int | None = None) -> str:
    """The store target holding what ``sae`` reads: ``visual.blocks.L.hook_resid_post@0`` (a
    class-token autoencoder) or ``visual.blocks.L.hook_resid_post`` (spatial). A negative layer
    needs ``n_layers`` (or a store holding a single such target)."""
    want_pos = sae.cfg.token == "cls"
    layer = sae.cfg.layer
    if layer is None:
        raise ValueError("this autoencoder records no layer: build it with SAEConfig(layer=...)")
    found = {name: m for name in store.targets if (m := _RESID.match(name)) and bool(m.group(2)) == want_pos}
    if layer < 0 and n_layers is not None:
        layer += n_layers
    if layer >= 0:
        name = f"visual.blocks.{layer}.hook_resid_post" + ("@0" if want_pos else "")
        if name in store.targets:
            return name
    elif len(found) == 1:
        return next(iter(found))
    what = "the class-token row (NAME@0)" if want_pos else "every token (no @POS)"
    raise ValueError(
        f"the store at {store.path} holds no residual stream the autoencoder reads (layer {sae.cfg.layer}, "
        f"{what}); it holds targets {list(store.targets)}: extract it with "
        f"--targets visual.blocks.L.hook_resid_post{'@0' if want_pos else ''}"
    )


def check_hook_point(target: str, sae: TopKSAE, n_layers: int | None = None) -> None:
    """Refuse a store target that is not the residual stream ``sae`` reads (another site,
    another token form, or, when the layer can be resolved, another layer)."""
    m = _RESID.match(target)
    want_pos = sae.cfg.token == "cls"
    layer = sae.cfg.layer
    if layer is not None and layer < 0 and n_layers is not None:
        layer += n_layers
    if m is None or bool(m.group(2)) != want_pos or (layer is not None and layer >= 0 and int(m.group(1)) != layer):
        form = "@0" if want_pos else ""
        raise ValueError(
            f"the store target {target!r} is not the hook point the autoencoder reads (resid_post of layer "
            f"{sae.cfg.layer}, {sae.cfg.token} token: visual.blocks.L.hook_resid_post{form}): pass that target"
        )


def check_store(store, sae: TopKSAE, target: str) -> None:
    """Refuse a store of another width or model than the autoencoder's (``ValueError`` or
    :class:`~hookedclip.identity.ModelMismatch`, naming both)."""
    shape = store.targets[target].shape
    if shape[-1] != sae.d_in:
        raise ValueError(
            f"the store's {target!r} rows have width {shape[-1]}, the autoencoder reads width {sae.d_in}: "
            "it was trained on another model or hook point; use a store extracted from its model"
        )
    if sae.model_identity is not None and store.model is not None and not same_model(sae.model_identity, store.model):
        from hookedclip.identity import ModelMismatch

        raise ModelMismatch(
            f"the store at {store.path} was extracted from another model than the autoencoder was trained on: "
            f"{describe_mismatch(sae.model_identity, store.model)}; use a store extracted from its model"
        )


@torch.no_grad()
def top_activations_from_store(
    sae: TopKSAE,
    store,
    n: int = 100,
    pool: Pool = "max",
    chunk: int = 4096,
    target: str | None = None,
    n_layers: int | None = None,
    device: str | torch.device | None = None,
) -> TopActivations:
    """The per-latent top ``n`` over every row of ``store`` (an
    :class:`~hookedclip.data.store.ActivationStore`), encoding ``chunk`` rows at a time.
    ``target``: the store target to read (default: the one matching the autoencoder's hook
    point, :func:`store_target`). Sample indices are the store's dataset ``index`` rows."""
    target = target or store_target(store, sae, n_layers)
    if target not in store.targets:
        raise KeyError(f"{target!r} is not a target of the store at {store.path}; it holds {list(store.targets)}")
    check_hook_point(target, sae, n_layers)
    check_store(store, sae, target)
    device = device or sae.W_enc.device
    acc = TopNAccumulator(n, sae.d_sae, device=device)
    for start in range(0, len(store), chunk):
        rows = store.rows(target, start, start + chunk).to(device, sae.W_enc.dtype)
        rows = rows if sae.cfg.token == "cls" else rows[:, 1:]  # patch tokens only, as the splice reads them
        index = store.rows("index", start, start + chunk)
        acc.update(latent_statistic(sae.encode(rows), sae.cfg.token, pool), index)
    return _result(sae, acc, pool, store.model or sae.model_identity)


# ---------------------------------------------------------------------------- from a model
@torch.no_grad()
def top_activations(
    model,
    sae: TopKSAE,
    batches: Tensor | Iterable[Tensor],
    n: int = 100,
    pool: Pool = "max",
    start_index: int = 0,
) -> TopActivations:
    """The per-latent top ``n`` over images run through ``model`` with ``sae`` spliced in
    observing mode (the forward is unchanged). ``batches``: image tensors ``[batch, 3, H, W]``
    (anything :func:`~hookedclip.data.batches.iter_images` reads); the sample index of an
    image is its position in the stream plus ``start_index``."""
    splice_site(model, sae)  # checks layer and width before any image is run
    acc = TopNAccumulator(n, sae.d_sae, device=sae.W_enc.device)
    codes: list[Tensor] = []

    def keep(a: Tensor, hook) -> None:
        codes.append(a)

    position = start_index
    with splice(model, sae, mode="off"), sae.hooks(fwd_hooks=[("hook_sae_acts_post", keep)]):
        for images in iter_images(batches, model):
            codes.clear()
            model(images)
            a = codes[0][:, 0] if sae.cfg.token == "cls" else codes[0]
            acc.update(latent_statistic(a.float(), sae.cfg.token, pool), torch.arange(position, position + len(a)))
            position += len(a)
    return _result(sae, acc, pool, as_identity(model))


def _result(sae: TopKSAE, acc: TopNAccumulator, pool: str, model) -> TopActivations:
    settings = {"layer": sae.cfg.layer, "token": sae.cfg.token, "pool": pool, "samples": acc.seen, "n": acc.n}
    return TopActivations(acc.values.cpu(), acc.indices.cpu(), settings, model=as_identity(model))


__all__ = [
    "POOLS",
    "TopActivations",
    "TopNAccumulator",
    "check_hook_point",
    "check_store",
    "latent_statistic",
    "store_target",
    "top_activations",
    "top_activations_from_store",
]
