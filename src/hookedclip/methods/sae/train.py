"""Training a TopK autoencoder from an activation store (no ViT in the loop) or a running model.

::

    sae, log = train(store, "visual.blocks.11.hook_resid_post@0", TrainConfig(d_sae=30000, k=64))
    sae, log = train((model, batches), cfg=TrainConfig(token="spatial"))   # streamed patch tokens

Each step: a batch of vectors ``h``, the code's top-k, ``x̂`` by gathering the k atoms, the cosine
reconstruction loss (:func:`~hookedclip.methods.sae.train_log.cosine_loss`), a clipped AdamW
step, the learning-rate schedule, and every atom rescaled to unit norm. With ``out=DIR`` a
checkpoint (weights, optimiser, schedule, firing counts, log, random state and the step; the data
order is a function of the seed and the step) is written every ``checkpoint_every`` steps and at
the end; ``resume=True`` continues from it and ends with the same weights, bit for bit, as a run
that was never stopped. A loss or weight that turns NaN or Inf stops the run with
:class:`TrainingDiverged` naming the step; the last checkpoint written is the last good one.

Under ``torchrun`` (``torch.distributed`` initialised) every process calls this with the same
arguments: each reads its own ``batch_size / world`` rows of every global batch and
``DistributedDataParallel`` averages the gradients, so the run follows the single-process one
(same data order, same global batch) up to float rounding.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from hookedclip.data.store import ActivationStore
from hookedclip.identity import as_identity, check_same_model
from hookedclip.methods.sae.model import SAEConfig, TopKSAE
from hookedclip.methods.sae.train_config import TrainConfig
from hookedclip.methods.sae.train_data import ModelSource, StoreSource, TargetSite, model_hook
from hookedclip.methods.sae.train_log import Metrics, TrainLog, cosine_loss

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.json"
CHECKPOINT_FORMAT = "hookedclip-sae-train-v1"


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or Inf."""


class Objective(nn.Module):
    """The autoencoder and its loss as one module (what ``DistributedDataParallel`` wraps)."""

    def __init__(self, sae: TopKSAE) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, h: Float[Tensor, "n d"]):
        values, indices = self.sae.select(self.sae.encode_pre(h))
        recons = self.sae.decode_sparse(values, indices)
        return cosine_loss(recons, h), recons, values, indices


def train(
    source,
    target: str | None = None,
    cfg: TrainConfig | None = None,
    *,
    sae: TopKSAE | None = None,
    model=None,
    out: str | Path | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[TopKSAE, TrainLog]:
    """Train an autoencoder; returns it (in eval mode) and its :class:`TrainLog`.

    Args:
        source: an :class:`~hookedclip.data.store.ActivationStore` (or its directory), or
            ``(model, batches)`` to run the model on every step's image batch (``batches`` as
            everywhere: image tensors or ``(images, labels)`` tuples; re-iterable for more steps
            than batches). Streamed, one step is one image batch and ``cfg.batch_size`` is unused.
        target: the store target (default: the store's only one) or the model's hook (default:
            ``resid_post`` of ``cfg.layer``, the last block if unset). A target of whole token rows
            gives the class token (``cfg.token="cls"``) or every patch token (``"spatial"``).
        cfg: the recipe (:class:`TrainConfig`; default: the published one).
        sae: an autoencoder to continue training (its own ``d_sae``, ``k`` and activation are
            used); it must read the target's width and hook point.
        model: the model the store was extracted from, to check it and to resolve a negative
            ``cfg.layer``; implied by a ``(model, batches)`` source.
        out: a directory for checkpoints, the final autoencoder (:meth:`TopKSAE.save`) and the log.
        resume: continue from ``out``'s checkpoint (start afresh when there is none).
        stop_after: stop after this step (with a checkpoint), as an interrupted run would.
        device: default: ``cuda:LOCAL_RANK`` where a GPU is present (the model's device when
            streaming), else the CPU.
    """
    cfg = cfg or TrainConfig()
    rank, world = _distributed()
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size {cfg.batch_size} does not split over {world} processes: use a multiple of {world}"
        )
    data, site, identity, n_layers = _open_source(source, target, cfg, model)
    device = torch.device(device) if device is not None else _default_device(source)
    sae = _prepare_sae(sae, cfg, site, identity, n_layers, device)
    objective = Objective(sae)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=ids)
    optimiser = torch.optim.AdamW(sae.parameters(), lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, cfg.milestone_steps(), gamma=cfg.gamma)
    autocast_dtype = _autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    metrics, log = Metrics(sae.d_sae, cfg.dead_window, device), TrainLog(config=cfg.to_dict())
    parts = {"sae": sae, "optimiser": optimiser, "schedule": schedule, "scaler": scaler, "metrics": metrics}
    out = None if out is None else Path(out)
    start = _restore(out, resume, cfg, parts, log, rank)
    stop = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    reduce = _all_reduce if world > 1 else None
    bar = tqdm(total=cfg.steps, initial=start, desc="sae train", disable=not cfg.progress or rank != 0)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    last_good = start
    began = time.perf_counter()
    for step in range(start, stop):
        h = data.batch(step, cfg.batch_size, rank, world).to(device=device, dtype=sae.W_enc.dtype, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss, recons, values, indices = objective(h)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimiser)
        nn.utils.clip_grad_norm_(sae.parameters(), cfg.clip_norm)
        scaler.step(optimiser)
        scaler.update()
        schedule.step()
        sae.normalize_decoder_()
        done = step + 1
        metrics.update(loss, recons, h, values, indices, metrics.seen + h.shape[0] * world)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), done, first_bad)
        logging = done == cfg.steps or (cfg.log_every and done % cfg.log_every == 0)
        saving = out is not None and (done == stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0))
        if logging or saving or done == stop:
            _check_finite(first_bad, sae, done, last_good, out, reduce)
            last_good = done
        if logging:
            log.append(done, metrics.seen, schedule.get_last_lr()[0], metrics.line(reduce))
            bar.set_postfix(
                loss=f"{log.loss[-1]:.4f}", cos=f"{log.cosine[-1]:.3f}", dead=f"{log.dead_fraction[-1]:.2f}"
            )
        if saving:
            log.seconds += time.perf_counter() - began
            began = time.perf_counter()
            _save_checkpoint(out, done, cfg, parts, log, rank, world)
        bar.update(1)
    bar.close()
    if out is not None and rank == 0 and stop == cfg.steps:
        sae.save(out)
        log.save(out / LOG)
    if world > 1:
        dist.barrier()
    return sae.eval(), log


# ---------------------------------------------------------------------------- sources and checks
def _open_source(source, target, cfg: TrainConfig, model):
    """``(data, site, identity, n_layers)`` of a store or a ``(model, batches)`` source."""
    if isinstance(source, tuple):
        if len(source) != 2:
            raise TypeError("a streamed source is a pair (model, batches)")
        model, batches = source
        hook = target or model_hook(model, cfg.layer)
        if hook not in set(model.hook_points()):
            raise KeyError(f"{hook!r} is not a hook point of the model (e.g. {model_hook(model, -1)!r})")
        site = TargetSite.parse(hook, model.cfg.d_model)
        _check_token(site, cfg.token, rows_have_tokens=True)
        return ModelSource(model.eval(), batches, hook, cfg.token), site, as_identity(model), model.cfg.n_layers
    store = source if isinstance(source, ActivationStore) else ActivationStore(source)
    if target is None:
        if len(store.targets) != 1:
            raise ValueError(f"the store holds several targets {list(store.targets)}: name one with target=")
        target = next(iter(store.targets))
    if target not in store.targets:
        raise KeyError(f"the store at {store.path} holds no target {target!r}; it holds {list(store.targets)}")
    shape = store.targets[target].shape
    if len(shape) not in (1, 2):
        raise ValueError(
            f"target {target!r} has rows of shape {shape}: training reads vectors [D] or token rows [T, D] "
            "(a residual-stream hook, whole or at one position)"
        )
    if model is not None:
        store.check(model=model)
    site = TargetSite.parse(target, shape[-1])
    _check_token(site, cfg.token, rows_have_tokens=len(shape) == 2)
    n_layers = None if model is None else model.cfg.n_layers
    return StoreSource(store, target, cfg.token, cfg.seed), site, store.model, n_layers


def _check_token(site: TargetSite, token: str, rows_have_tokens: bool) -> None:
    if site.position not in (None, 0):
        raise ValueError(
            f"target {site.name!r} holds token {site.position} only: an autoencoder reads the class token "
            "(@0) or every patch token (the hook without @)"
        )
    if token == "spatial" and not rows_have_tokens:
        raise ValueError(
            f"token='spatial' needs every token's row, but target {site.name!r} holds one vector per image: "
            "extract the hook without @POS, or train with token='cls'"
        )


def _prepare_sae(sae, cfg: TrainConfig, site: TargetSite, identity, n_layers, device) -> TopKSAE:
    layer = _resolved_layer(cfg.layer, site, n_layers, "the config")
    if sae is None:
        sae_cfg = SAEConfig(site.width, cfg.d_sae, cfg.k, cfg.activation, layer=layer, token=cfg.token)
        sae = TopKSAE(sae_cfg, model=identity)
        sae.reset_parameters(generator=torch.Generator().manual_seed(cfg.seed))
        return sae.to(device).train()
    if sae.d_in != site.width:
        raise ValueError(
            f"the autoencoder reads vectors of width {sae.d_in} ({sae!r}), but target {site.name!r} holds "
            f"width {site.width}: train a new one or use the store of the model it was trained on"
        )
    _resolved_layer(sae.cfg.layer, site, n_layers, f"the autoencoder {sae!r}")
    if sae.cfg.token != cfg.token:
        raise ValueError(f"the autoencoder reads token {sae.cfg.token!r}, the config asks for {cfg.token!r}")
    if sae.model_identity is not None and identity is not None:
        check_same_model(sae.model_identity, identity, what="this autoencoder")
    return sae.to(device).train()


def _resolved_layer(layer: int | None, site: TargetSite, n_layers: int | None, who: str) -> int | None:
    """The layer to record: the given one, checked against the target's where both are known."""
    if layer is None:
        return site.layer
    absolute = layer + n_layers if layer < 0 and n_layers is not None else layer
    if site.layer is not None and absolute >= 0 and absolute != site.layer:
        raise ValueError(
            f"{who} reads the residual stream after block {layer}, but target {site.name!r} is block "
            f"{site.layer}'s: use the matching target or layer"
        )
    return layer


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _default_device(source) -> torch.device:
    if isinstance(source, tuple):
        return next(source[0].parameters()).device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.precision == "fp32":
        return None
    if cfg.precision == "fp16" or (cfg.precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _all_reduce(tensor: Tensor, op: str) -> None:
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)


def _check_finite(first_bad: Tensor, sae: TopKSAE, done: int, last_good: int, out, reduce) -> None:
    bad = first_bad.clone()
    broken = torch.tensor([0 if all(torch.isfinite(p).all() for p in sae.parameters()) else 1], device=bad.device)
    if reduce is not None:
        reduce(bad, "max")
        reduce(broken, "max")
    if int(bad) < 0 and not int(broken):
        return
    where = f"at step {int(bad)}" if int(bad) >= 0 else f"between steps {last_good} and {done}"
    kept = (
        f"the last good checkpoint (step {last_good}) is kept in {out / CHECKPOINT}"
        if out is not None and (out / CHECKPOINT).exists()
        else "no checkpoint was written (pass out= to keep one)"
    )
    raise TrainingDiverged(
        f"training diverged: the {'loss' if int(bad) >= 0 else 'weights'} became NaN or Inf {where}; {kept}. "
        "Lower the learning rate, or check the input rows for NaN/Inf"
    )


# ---------------------------------------------------------------------------- checkpoints
def _save_checkpoint(out: Path, step: int, cfg: TrainConfig, parts: dict, log: TrainLog, rank: int, world: int):
    if rank != 0:
        return
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "config": cfg.to_dict(),
        "sae_config": parts["sae"].cfg.__dict__,
        "model": parts["sae"].model_identity,
        "sae": parts["sae"].state_dict(),
        "optimiser": parts["optimiser"].state_dict(),
        "schedule": parts["schedule"].state_dict(),
        "scaler": parts["scaler"].state_dict(),
        "metrics": parts["metrics"].state(),
        "log": log.to_dict(),
        "rng": torch.get_rng_state(),
        "world": world,
    }
    tmp = out / f".{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


def _restore(out: Path | None, resume: bool, cfg: TrainConfig, parts: dict, log: TrainLog, rank: int) -> int:
    """Load ``out``'s checkpoint into ``parts`` and ``log``; the step to continue from."""
    file = None if out is None else out / CHECKPOINT
    if file is None or not file.exists():
        return 0
    state = torch.load(file, map_location="cpu", weights_only=False)
    if not resume:
        raise FileExistsError(
            f"{out} already holds a training checkpoint (step {state['step']}): pass resume=True "
            "(--resume) to continue it, or choose another output directory"
        )
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{file} is not a checkpoint of this trainer (format {state.get('format')!r})")
    changed = TrainConfig.from_dict(state["config"]).differences(cfg)
    if changed:
        raise ValueError(f"cannot resume {file} with another recipe ({'; '.join(changed)}): use the same config")
    sae = parts["sae"]
    if state["sae_config"] != sae.cfg.__dict__:
        raise ValueError(f"cannot resume {file}: it trains {state['sae_config']}, this run builds {sae.cfg.__dict__}")
    with torch.no_grad():
        sae.load_state_dict(state["sae"])
    parts["optimiser"].load_state_dict(state["optimiser"])
    parts["schedule"].load_state_dict(state["schedule"])
    parts["scaler"].load_state_dict(state["scaler"])
    parts["metrics"].load_state(state["metrics"])
    saved = TrainLog(**state["log"])
    for name, value in saved.to_dict().items():
        setattr(log, name, value)
    torch.set_rng_state(state["rng"])
    return state["step"]
