"""The reproducible training recipe of the shipped toy CLIP.

Contrastive (CLIP) training of a tiny ``open_clip.CLIP`` on the procedural toy world:

* data: batch ``k`` is items ``[k * B, (k + 1) * B)`` of ``ToyWorld(split="train", seed=seed,
  spurious_in_train=SpuriousSpec(p_aligned=...))``, rendered on the fly (nothing is held in
  memory; the next batch is rendered in a background thread while the current one trains);
* captions: ``world.caption`` with ``CAPTION_KEEP`` (shape always mentioned);
* hard negatives for shape (the slow attribute): part of each batch is blocks of the 7 shapes
  sharing colour, background and texture (:func:`batch_items`);
* planted spurious structure: circles appear on stripes and squares on dots in ``p_aligned``
  of their training images (the other shapes on every texture);
* AdamW, linear warm-up then cosine decay; no weight decay on the token embedding, gains,
  biases, embeddings and the logit scale (so embedding rows of tokens that never occur stay
  exactly at their seeded initialisation, which keeps the shipped file small);
* checkpoints (model + optimizer + step) every ``ckpt_every`` steps, written to a temporary
  file and renamed; re-running the same call resumes from the last one and gives the same
  parameters as an uninterrupted run (training draws nothing from torch's RNG, so there is
  no RNG state to restore);
* at the end: ``toy_clip.safetensors``, ``card.json`` and ``MODEL_CARD.md`` (:mod:`hookedclip.toy.card`)
  in ``out_dir``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hookedclip.toy import model as toy_model
from hookedclip.toy.attributes import SHAPES, TEXTURES, WORLD_VERSION
from hookedclip.toy.card import model_card_markdown
from hookedclip.toy.dataset import SpuriousSpec, ToyWorld
from hookedclip.toy.render import render_batch
from hookedclip.toy.text import caption

CAPTION_KEEP: dict[str, float] = {
    "shape": 1.0,
    "color": 0.5,
    "texture": 0.5,
    "size": 0.3,
    "position": 0.2,
    "background": 0.3,
}
CHECKPOINT_FILE = "checkpoint.pt"
DEFAULTS: dict[str, Any] = dict(steps=3000, batch_size=64, lr=1e-3, seed=0)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matching image/text pairs (open_clip's ``ClipLoss``, one process)."""
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp() * img @ txt.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def lr_factor(step: int, steps: int, warmup: int, final: float = 0.0) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``final``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _param_groups(model, lr: float, weight_decay: float, vision_lr_mult: float) -> list[dict]:
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        vision = name.startswith("visual.")
        decay = p.ndim >= 2 and "embedding" not in name and name not in ("positional_embedding",)
        groups.setdefault((vision, decay), []).append(p)
    out = []
    for (vision, decay), params in sorted(groups.items()):
        base = lr * (vision_lr_mult if vision else 1.0)
        out.append({"params": params, "lr": base, "base_lr": base, "weight_decay": weight_decay if decay else 0.0})
    return out


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def batch_items(world: ToyWorld, k: int, batch_size: int, hard_negatives: float = 0.0) -> tuple[list, list[str]]:
    """Attributes and captions of training batch ``k``: items ``[k*B, (k+1)*B)`` of ``world``.

    Hard negatives for shape: the first ``floor(hard_negatives * B / 7) * 7`` items form blocks
    of 7 consecutive items in which item ``r`` of a block shows ``SHAPES[r]`` with the colour
    and background of the block's first item (its own position and size); the texture is the
    first item's too, except that circles and squares get their planted (spurious) texture.
    Within a block only shape (and position/size) tells the images apart.
    """
    start = k * batch_size
    n_hard = int(hard_negatives * batch_size / len(SHAPES)) * len(SHAPES)
    attrs, texts = [], []
    leader, texture = None, TEXTURES[0]
    for r, i in enumerate(range(start, start + batch_size)):
        a, _, rng = world._draw(i)
        if r < n_hard:
            j = r % len(SHAPES)
            if j == 0:  # the block's colour, background and (uniform) texture
                leader = a
                texture = TEXTURES[int(np.random.default_rng([world.seed, 0, i, 2]).integers(len(TEXTURES)))]
            a = dataclasses.replace(
                a, shape=SHAPES[j], color=leader.color, background=leader.background, texture=texture
            )
            a = world.plant_texture(a, i)
        attrs.append(a)
        texts.append(caption(a, rng, world.caption_keep)[0])
    return attrs, texts


class _Batches:
    """Batch ``k`` of the training world as (images float32 [B, 3, H, W], tokens [B, ctx])."""

    def __init__(
        self, world: ToyWorld, batch_size: int, context_length: int, prefetch: bool, hard_negatives: float = 0.0
    ) -> None:
        import open_clip

        self.world, self.batch_size, self.hard_negatives = world, batch_size, hard_negatives
        self.tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
        self.pool = concurrent.futures.ThreadPoolExecutor(1) if prefetch else None
        self.pending: dict[int, concurrent.futures.Future] = {}

    def make(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        attrs, texts = batch_items(self.world, k, self.batch_size, self.hard_negatives)
        images = toy_model.images_to_tensor(render_batch(attrs, self.world.image_size)[0])
        return images, self.tokenizer(texts)

    def get(self, k: int, prefetch_next: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool is None:
            return self.make(k)
        fut = self.pending.pop(k, None)
        batch = fut.result() if fut is not None else self.make(k)
        if prefetch_next and (k + 1) not in self.pending:
            self.pending[k + 1] = self.pool.submit(self.make, k + 1)
        return batch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def train(
    out_dir: str | Path,
    steps: int = DEFAULTS["steps"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    seed: int = DEFAULTS["seed"],
    *,
    warmup: int = 200,
    final_lr_frac: float = 0.1,
    vision_lr_mult: float = 1.0,
    weight_decay: float = 0.05,
    caption_keep: dict[str, float] | None = None,
    p_aligned: float = 0.95,
    hard_negatives: float = 0.5,
    max_logit_scale: float = 100.0,
    embed_dim: int = toy_model.TOY_EMBED_DIM,
    vision_cfg: dict | None = None,
    text_cfg: dict | None = None,
    ckpt_every: int = 100,
    eval_every: int = 0,
    eval_n: int = 500,
    final_eval_n: int = 2000,
    resume: bool = True,
    export: bool = True,
    num_threads: int | None = 2,
    prefetch: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    log_file: str | Path | None = None,
) -> dict:
    """Train the toy CLIP; returns ``{"step", "losses", "train_time_s", "evals", "card"}``.

    ``out_dir`` receives ``checkpoint.pt`` (while training) and, at the end (``export``), the
    shipped files. ``resume``: continue from ``out_dir/checkpoint.pt`` if it exists (its recipe
    must match). ``stop_after``: return after this many steps in total, as if interrupted
    (tests). ``eval_every``: zero-shot evaluation on ``eval_n`` held-out images every so many
    steps (0: never; only the final evaluation on ``final_eval_n`` images).
    """
    from tqdm.auto import tqdm

    if num_threads:
        torch.set_num_threads(num_threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vision_cfg = dict(toy_model.TOY_VISION_CFG if vision_cfg is None else vision_cfg)
    text_cfg = dict(toy_model.TOY_TEXT_CFG if text_cfg is None else text_cfg)
    keep = dict(CAPTION_KEEP if caption_keep is None else caption_keep)
    spec = SpuriousSpec(p_aligned=p_aligned)
    recipe = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "warmup": warmup,
        "final_lr_frac": final_lr_frac,
        "vision_lr_mult": vision_lr_mult,
        "weight_decay": weight_decay,
        "caption_keep": keep,
        "hard_negatives": hard_negatives,
        "spurious_in_train": dataclasses.asdict(spec),
        "max_logit_scale": max_logit_scale,
        "optimizer": "AdamW(betas=(0.9, 0.98), eps=1e-6)",
        "schedule": "linear warm-up, cosine decay",
        "loss": "symmetric InfoNCE (CLIP)",
        "data": "batch k = ToyWorld(split='train') items [k*B, (k+1)*B)",
    }
    arch = {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}

    model = toy_model.build_open_clip_toy(seed, embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, lr, weight_decay, vision_lr_mult), betas=(0.9, 0.98), eps=1e-6)
    state = {"step": 0, "losses": [], "train_time_s": 0.0, "evals": []}
    ckpt_path = out / CHECKPOINT_FILE
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["recipe"] != json.loads(json.dumps(recipe)) or ckpt["arch"] != json.loads(json.dumps(arch)):
            raise ValueError(
                f"{ckpt_path} was written by a different recipe or architecture; use another --out "
                "or --no-resume to start over"
            )
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
    state["num_threads"] = torch.get_num_threads()  # of the latest session (the card records it)

    world = ToyWorld(max(1, steps * batch_size), seed=seed, split="train", caption_keep=keep, spurious_in_train=spec)
    batches = _Batches(world, batch_size, text_cfg["context_length"], prefetch, hard_negatives)
    max_scale = math.log(max_logit_scale)

    def save_checkpoint() -> None:
        _atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "state": state,
                "recipe": json.loads(json.dumps(recipe)),
                "arch": json.loads(json.dumps(arch)),
            },
            ckpt_path,
        )

    end = steps if stop_after is None else min(steps, stop_after)
    log = open(log_file, "a") if log_file else None
    bar = tqdm(total=steps, initial=state["step"], desc="toy CLIP", disable=not progress, dynamic_ncols=True)
    try:
        while state["step"] < end:
            k = state["step"]
            t0 = time.perf_counter()
            images, tokens = batches.get(k, prefetch_next=k + 1 < end)
            factor = lr_factor(k, steps, warmup, final_lr_frac)
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
            loss = clip_loss(model.encode_image(images), model.encode_text(tokens), model.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_scale)
            state["step"] = k + 1
            state["losses"].append(loss.item())
            state["train_time_s"] += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.0f}")
            if eval_every and state["step"] % eval_every == 0 and state["step"] < steps:
                _record_eval(model, state, eval_n, log)
            if state["step"] % ckpt_every == 0 or state["step"] == end:
                save_checkpoint()
    finally:
        bar.close()
        batches.close()
    result = {k: state[k] for k in ("step", "losses", "train_time_s", "evals")}
    if state["step"] >= steps and export:
        card = export_model(model, out, seed=seed, arch=arch, recipe=recipe, state=state, eval_n=final_eval_n)
        result["card"] = card
        if log:
            log.write(json.dumps({"final": card["accuracy"], "spurious": card["spurious"]}) + "\n")
    if log:
        log.close()
    return result


def _record_eval(model, state: dict, n: int, log) -> None:
    from hookedclip.toy.evaluate import evaluate

    res = evaluate(_to_hooked(model), n=n, validation=True)  # monitoring: never the test set
    entry = {
        "step": state["step"],
        "time_s": round(state["train_time_s"], 1),
        "loss": round(sum(state["losses"][-50:]) / len(state["losses"][-50:]), 4),
        **{k: round(v, 4) for k, v in res["accuracy"].items()},
        "sp_avg": round(res["spurious"]["average"], 4),
        "sp_wga": round(res["spurious"]["worst_group"], 4),
    }
    state["evals"].append(entry)
    # the card states each curve point's interval, so it needs the sizes the accuracies were measured on
    state["eval_sizes"] = {
        "n": res["n"],
        "n_spurious": res["spurious"]["n"],
        "spurious_group_n": min(res["spurious"]["group_n"].values()),
        "split": "val",
        "seed": res["seed"],
    }
    if log:
        log.write(json.dumps(entry) + "\n")
        log.flush()
    model.train()


def _to_hooked(model):
    from hookedclip.model.hooked import HookedCLIP

    hooked = HookedCLIP.from_open_clip(model)
    hooked.cfg.image_mean, hooked.cfg.image_std = toy_model.TOY_IMAGE_MEAN, toy_model.TOY_IMAGE_STD
    return hooked


def export_model(model, out: Path, *, seed: int, arch: dict, recipe: dict, state: dict, eval_n: int) -> dict:
    """Write ``toy_clip.safetensors``, ``card.json`` and ``MODEL_CARD.md`` into ``out``."""
    from safetensors.torch import save_file

    from hookedclip.toy.evaluate import EVAL_SEED, evaluate

    model.eval()
    packed = toy_model.pack_state(model, seed)
    tmp = out / (toy_model.WEIGHTS_FILE + ".tmp")
    save_file(packed, str(tmp))
    os.chmod(tmp, 0o644)
    os.replace(tmp, out / toy_model.WEIGHTS_FILE)
    digest = hashlib.sha256((out / toy_model.WEIGHTS_FILE).read_bytes()).hexdigest()
    card = {
        "name": "toy",
        "checkpoint_id": digest[:12],
        "world_version": WORLD_VERSION,
        "seed": seed,
        "steps": state["step"],
        "images_seen": state["step"] * recipe["batch_size"],
        "train_time_s": round(state["train_time_s"], 1),
        "train_machine": f"{platform.machine()}, torch {torch.__version__}",
        "train_threads": state.get("num_threads", torch.get_num_threads()),
        "final_loss": round(sum(state["losses"][-50:]) / max(1, len(state["losses"][-50:])), 4),
        "config": arch,
        "recipe": json.loads(json.dumps(recipe)),
        "image_mean": list(toy_model.TOY_IMAGE_MEAN),
        "image_std": list(toy_model.TOY_IMAGE_STD),
        "n_params": sum(p.numel() for p in model.parameters()),
        "token_embedding_rows_stored": int(packed[toy_model.ROWS_KEY].numel()),
        "token_embedding_sha256": toy_model.table_hash(model.token_embedding.weight),
        "weights_sha256": digest,
        "training_curve": state["evals"],
    }
    if state["evals"]:
        card["training_curve_eval"] = state.get("eval_sizes")
    (out / toy_model.CARD_FILE).write_text(json.dumps(card, indent=2))  # loadable before evaluation
    hooked = toy_model.load_toy_model(weights=out)
    res = evaluate(hooked, n=eval_n, seed=EVAL_SEED)
    card["eval"] = {"n": res["n"], "seed": res["seed"], "split": "test"}
    card["accuracy"] = res["accuracy"]
    card["chance"] = res["chance"]
    card["spurious"] = res["spurious"]
    (out / toy_model.CARD_FILE).write_text(json.dumps(card, indent=2))
    (out / "MODEL_CARD.md").write_text(model_card_markdown(card))
    return card
