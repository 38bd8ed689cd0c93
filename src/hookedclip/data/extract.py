"""Extraction: run a model over a dataset and write the chosen activations to an ActivationStore.

One forward pass per batch fills every target: hook-point activations (optionally one
position, ``"visual.blocks.3.hook_resid_post@0"``) and decomposition targets
(``"heads"``: each head's direct CLS contribution to the image embedding in joint space;
``"heads/tokens"``: the same per source token; ``"decompose:L2-3,mlp3"``: chosen
components with the others summed into ``rest``; ``"components"``: every component).
Labels, group labels and dataset indices are stored as rows; float64 moments of every
target are accumulated as the rows are written.

Under ``torchrun`` each rank takes a contiguous slice of the dataset and writes its own
shards; rank 0 merges the logs and moments when all have finished. From the command line
(``hookedclip cache``, :mod:`hookedclip.cli.cache`)::

    torchrun --nproc-per-node 2 -m hookedclip.cli.cache --model toy --data toy:4096 --targets heads --out store/
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

import hookedclip
from hookedclip.components import ALL_COMPONENTS, select
from hookedclip.data.stats import RunningMoments
from hookedclip.data.store import (
    FORMAT,
    ActivationStore,
    RankWriter,
    StoreError,
    TargetSpec,
    dataset_fingerprint,
    finalize,
    moments_kind,
    spec_dicts,
)
from hookedclip.decompose import needed_hooks, stack_from_cache
from hookedclip.identity import model_identity
from hookedclip.names import act_name

ALIASES = {
    "heads": "decompose:heads",
    "heads/tokens": "decompose:heads/tokens",
    "components": "decompose:all",
    "embedding": act_name("out"),
}


# ---------------------------------------------------------------------------- targets
@dataclass
class Target:
    """A parsed target: a hook point (``pos``: keep one position) or a decomposition."""

    name: str
    hook: str | None = None
    pos: int | None = None
    components: list[str] | str = ALL_COMPONENTS  # decomposition: parsed by components.select
    positions: str = "cls"

    def hooks(self, model) -> set[str]:
        if self.hook is not None:
            return {self.hook}
        return needed_hooks(model, "visual", self.components) | {act_name("out")}

    def compute(self, model, images: Tensor, cache: dict[str, Tensor]) -> Float[Tensor, "batch *shape"]:  # noqa: F821 (a jaxtyping shape)
        if self.hook is not None:
            x = cache[self.hook]
            return x if self.pos is None else x[:, self.pos]
        stack = stack_from_cache(
            model, "visual", images, cache, cache[act_name("out")], positions=self.positions, components=self.components
        )
        self.labels = stack.labels
        return stack.tensor.movedim(1, 0)  # [batch, component, (pos,) d_out]


def parse_target(spec: str, model) -> Target:
    """``hook.name``, ``hook.name@POS``, ``heads``, ``heads/tokens``, ``components``,
    ``embedding``, ``decompose:SPEC[/tokens]`` (SPEC: ``all``, ``heads`` or components
    like ``L2-3,mlp3``)."""
    name = ALIASES.get(spec, spec)
    if name.startswith("decompose:"):
        body, _, tokens = name[len("decompose:") :].partition("/")
        if tokens not in ("", "tokens"):
            raise ValueError(f"target {spec!r}: the only suffix is '/tokens', got '/{tokens}'")
        comps = body.split(",")  # "all" and "heads" are specs too
        select(model, comps)  # a bad spec fails here, naming the model's layers and heads
        return Target(spec, components=comps, positions="all" if tokens else "cls")
    hook, _, pos = name.partition("@")
    valid = set(model.hook_points())
    if hook not in valid:
        import difflib

        close = difflib.get_close_matches(hook, valid, n=3, cutoff=0.5)
        raise KeyError(
            f"unknown target {spec!r}: not a hook point (closest: {close}) nor one of "
            f"{sorted(ALIASES)} / decompose:SPEC"
        )
    return Target(spec, hook=hook, pos=int(pos) if pos else None)


# ---------------------------------------------------------------------------- data loading
def _image_errors() -> tuple[type[BaseException], ...]:
    """What a file that cannot be decoded raises: ``OSError`` (missing, truncated, or
    ``PIL.UnidentifiedImageError``), PIL's ``DecompressionBombError`` and ``SyntaxError``
    (some PIL plugins' "broken file"). Anything else is a bug and propagates."""
    from PIL import Image

    return OSError, SyntaxError, Image.DecompressionBombError


class _Loading(torch.utils.data.Dataset):
    """Wraps a dataset: applies the model's preprocessing and turns an image that cannot be
    read or decoded into a skip record instead of an exception (so one bad file never stops
    a run). Only reading and decoding are guarded: an error in preprocessing propagates."""

    def __init__(self, dataset, preprocess) -> None:
        self.dataset, self.preprocess = dataset, preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        id_of = getattr(self.dataset, "id_of", None)  # names a file that fails to load
        ident = str(id_of(i)) if callable(id_of) else str(i)
        try:
            item = self.dataset[i]
            ident = str(item.get("id", i))
            image = item["image"]
            if not isinstance(image, Tensor):
                image = _to_pil(image)  # decoded here, inside the guard
        except _image_errors() as exc:
            return {"index": i, "id": ident, "image": None, "error": f"{type(exc).__name__}: {exc}"}
        if not isinstance(image, Tensor):
            image = self.preprocess(image)
        return {
            "index": i,
            "id": ident,
            "image": image,
            "label": int(item.get("label", -1)),
            "group": int(item.get("group", -1)),
            "error": None,
        }


def _to_pil(image):
    from PIL import Image

    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    if isinstance(image, Image.Image):
        image.load()  # a lazily opened file is decoded now (a truncated one fails here)
    return image


def _collate(items: list[dict]) -> dict:
    ok = [it for it in items if it["error"] is None]
    skipped = [{"index": it["index"], "id": it["id"], "error": it["error"]} for it in items if it["error"] is not None]
    batch = {"skipped": skipped, "ids": [it["id"] for it in ok]}
    for key in ("index", "label", "group"):
        batch[key] = torch.tensor([it[key] for it in ok], dtype=torch.int64)
    batch["images"] = torch.stack([it["image"] for it in ok]) if ok else None
    return batch


def rank_slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, disjoint slices whose union is ``[0, n)``; concatenated in rank order
    they are the dataset order."""
    return n * rank // world_size, n * (rank + 1) // world_size


def shard_ranges(lo: int, hi: int, rows_per_shard: int) -> list[tuple[int, int]]:
    return [(a, min(a + rows_per_shard, hi)) for a in range(lo, hi, rows_per_shard)]


def _batches(ranges: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches that never straddle a shard, so the batching (and so every float) of a
    shard is the same whether the run was resumed or not."""
    return [list(range(b, min(b + batch_size, stop))) for start, stop in ranges for b in range(start, stop, batch_size)]


# ---------------------------------------------------------------------------- the job
def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _probe(model, targets: list[Target], dtype: torch.dtype, moments: str) -> list[TargetSpec]:
    """Per-row shapes (and decomposition labels) from one blank image."""
    size = model.cfg.vision.image_size
    images = torch.zeros(1, 3, size, size, dtype=model.dtype, device=model.device)
    values = _forward(model, targets, images)
    return [
        TargetSpec(
            t.name,
            str(dtype).removeprefix("torch."),
            list(v.shape[1:]),
            moments_kind(v.shape[1:], moments),
            getattr(t, "labels", None),
        )
        for t, v in zip(targets, values)
    ]


@torch.no_grad()  # stored values need no autograd graph (it would only cost memory)
def _forward(model, targets: list[Target], images: Tensor) -> list[Tensor]:
    wanted = set().union(*(t.hooks(model) for t in targets))
    with model.cache(names_filter=lambda n: n in wanted) as cache:
        model.encode_image(images)
    cache = dict(cache)
    return [t.compute(model, images, cache) for t in targets]


def extract(
    model,
    dataset,
    targets: Sequence[str],
    store_path,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    rows_per_shard: int = 4096,
    moments: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
) -> ActivationStore | None:
    """Write ``targets`` of every image of ``dataset`` to the store at ``store_path``.

    Args:
        dataset: items are dicts with ``"image"`` (PIL image, uint8 ``[H, W, 3]`` array, or
            an already preprocessed tensor) and optionally ``"label"``, ``"group"``, ``"id"``;
            other images go through ``model.preprocess``. An item that cannot be read or decoded
            (``OSError``, e.g. a missing, truncated or unidentifiable file) is skipped, listed
            in the manifest (``store.skipped``) and counted in a warning; a shard none of
            whose images can be read stops the run (:class:`~hookedclip.data.store.StoreError`).
        targets: see :func:`parse_target`.
        dtype: stored dtype of float targets (moments use the stored values, in float64).
        rows_per_shard: dataset indices per shard (rows, less any skipped images).
        moments: ``"auto"`` (covariance where it fits in 64 MiB, else mean), ``"cov"``,
            ``"mean"`` or ``"none"``.

    A store left by an interrupted run with the same model, dataset, targets and
    parameters is resumed after its last complete shard; the result is byte-identical
    to an uninterrupted run. Under ``torch.distributed`` every rank calls this; the
    return value is the opened store (on every rank, after all have finished).
    """
    rank, world = _distributed()
    parsed = [parse_target(t, model) for t in targets]
    if len({t.name for t in parsed}) != len(parsed):
        raise ValueError(f"targets repeat: {list(targets)}")
    specs = _probe(model, parsed, dtype, moments)
    header = {
        "format": FORMAT,
        "model": model_identity(model),
        "dataset": dataset_fingerprint(dataset),
        "dataset_name": type(dataset).__name__,
        "targets": spec_dicts(specs),
        "rows_per_shard": rows_per_shard,
        "world_size": world,
        # the identity is one for fp32 and fp16 copies, but their rows differ: a resume must not mix them
        "params": {"batch_size": batch_size, "dtype": str(dtype), "model_dtype": str(model.dtype)},
        "created_with": {"hookedclip": getattr(hookedclip, "__version__", None), "torch": torch.__version__},
    }
    writer = RankWriter(store_path, header, rank)
    if not writer.done:
        _run_rank(
            model,
            dataset,
            parsed,
            specs,
            writer,
            batch_size,
            rows_per_shard,
            num_workers,
            progress and rank == 0,
            world,
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            finalize(store_path)
        dist.barrier()
    else:
        finalize(store_path)
    store = ActivationStore(store_path)
    if store.skipped and rank == 0:
        warnings.warn(
            f"{len(store.skipped)} of {len(dataset)} images could not be read and were skipped; their ids "
            f"and errors are in store.skipped ('skipped' in {store.path / 'manifest.json'})",
            stacklevel=2,
        )
    return store


def _run_rank(
    model, dataset, targets, specs, writer: RankWriter, batch_size, rows_per_shard, num_workers, progress, world
) -> None:
    lo, hi = rank_slice(len(dataset), writer.rank, world)
    ranges = shard_ranges(lo, hi, rows_per_shard)[writer.n_done :]
    acc = writer.moments() or {
        s.name: RunningMoments.empty(tuple(s.shape[:-1]), s.shape[-1], s.moments == "cov")
        for s in specs
        if s.moments != "none"
    }
    loader = torch.utils.data.DataLoader(
        _Loading(dataset, model.preprocess),
        batch_sampler=_batches(ranges, batch_size),
        collate_fn=_collate,
        num_workers=num_workers,
    )
    bar = tqdm(total=sum(b - a for a, b in ranges), disable=not progress, desc="extract", unit="img")
    batches = iter(loader)
    for start, stop in ranges:
        rows: dict[str, list[Tensor]] = {k: [] for k in [s.name for s in specs] + ["index", "label", "group"]}
        ids: list[str] = []
        skipped: list[dict] = []
        for _ in range(0, stop - start, batch_size):
            batch = next(batches)
            skipped += batch["skipped"]
            bar.update(len(batch["skipped"]) + len(batch["ids"]))
            if batch["images"] is None:
                continue
            values = _forward(model, targets, batch["images"].to(model.device, model.dtype))
            for spec, value in zip(specs, values):
                value = value.to(spec.torch_dtype).cpu()
                rows[spec.name].append(value)
                if spec.name in acc:
                    acc[spec.name].update(value)
            for key in ("index", "label", "group"):
                rows[key].append(batch[key])
            ids += batch["ids"]
        if not ids:
            first = skipped[0]
            raise StoreError(
                f"none of the {stop - start} images of dataset indices [{start}, {stop}) could be read "
                f"(first: {first['id']}: {first['error']}): check the dataset's path and files"
            )
        tensors = {k: torch.cat(v) for k, v in rows.items()}
        writer.commit(start, stop, tensors, ids, skipped, acc)
    bar.close()
    writer.finish()
