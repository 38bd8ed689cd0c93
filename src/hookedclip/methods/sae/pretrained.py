"""The shipped toy autoencoder: 256 latents, k = 8, on the toy CLIP's last-layer class token.

``toy()`` loads it (``TopKSAE.from_pretrained("toy")`` too); :func:`train_toy` is its recipe
(``python -m hookedclip.methods.sae.make_toy``): it extracts the class-token residual after the
last block for the toy world's training images into a store, trains from the store, measures the
autoencoder on held-out (test-split) images and rewrites ``toy/weights/sae.*``, ``sae_card.json``, ``sae_train_log.json`` and ``SAE_CARD.md``.

:func:`attribute_purity` is the check that its latents mean something: for each latent, the
images that activate it most, and how many of them share one value of one attribute (shape,
colour, texture, background), against the same count for random images.
"""

from __future__ import annotations

import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hookedclip.methods.sae.model import TopKSAE
from hookedclip.methods.sae.train import train
from hookedclip.methods.sae.train_config import TrainConfig
from hookedclip.methods.sae.train_log import ln_fvu_terms

WEIGHTS = Path(__file__).resolve().parents[2] / "toy" / "weights"
CARD_JSON, CARD_MD, LOG_JSON = "sae_card.json", "SAE_CARD.md", "sae_train_log.json"
ATTRIBUTES = ("shape", "color", "texture", "background")
RECIPE = {
    "images": 4096,
    "seed": 0,
    "held_out": 2048,
    "top_n": 16,
    "config": {"d_sae": 256, "k": 8, "steps": 3000, "batch_size": 256, "lr": 1e-3, "layer": -1, "token": "cls"},
}


def toy(model=None) -> TopKSAE:
    """The shipped toy autoencoder; with ``model``, refuse a model it was not trained on."""
    if not (WEIGHTS / "sae.json").exists():
        raise FileNotFoundError(
            f"no toy autoencoder in {WEIGHTS}: run `python -m hookedclip.methods.sae.make_toy` to train it"
        )
    return TopKSAE.load(WEIGHTS, model=model).eval()


def from_pretrained(name: str, model=None) -> TopKSAE:
    """``"toy"``: :func:`toy` (the only autoencoder shipped with the package)."""
    if name != "toy":
        raise ValueError(
            f"no shipped autoencoder {name!r}: the only one is 'toy'; load others with TopKSAE.load(DIR) "
            "or TopKSAE.from_reference(CHECKPOINT)"
        )
    return toy(model)


def class_tokens(model, world, batch_size: int = 512) -> Float[Tensor, "n d_model"]:
    """The class token's residual after the last block for every image of a toy world."""
    from hookedclip.names import act_name
    from hookedclip.toy.model import images_to_tensor

    site = act_name("resid_post", model.cfg.n_layers - 1)
    rows = []
    with torch.no_grad():
        for start in range(0, len(world), batch_size):
            images = world.images(range(start, min(start + batch_size, len(world))))
            x = images_to_tensor(images, tuple(model.cfg.image_mean), tuple(model.cfg.image_std))
            _, cache = model.run_with_cache(x, names_filter=site)
            rows.append(cache[site][:, 0])
    return torch.cat(rows)


def attribute_purity(codes: Float[Tensor, "n d_sae"], world, top_n: int = 16, seed: int = 0) -> dict:
    """``world``: a toy world or a list of its images' attributes, one per row of ``codes``.

    For every latent that fires on at least ``top_n`` images: its ``top_n`` most activating
    images, the attribute value most of them share (``attribute``, ``value``) and that share
    (``purity``); ``chance``: the same share for random sets of ``top_n`` images, averaged."""
    attributes = world.attributes() if hasattr(world, "attributes") else list(world)
    table = {a: np.array([getattr(x, a) for x in attributes]) for a in ATTRIBUTES}

    def best(indices: np.ndarray) -> tuple[str, str, float]:
        scores = []
        for attribute, values in table.items():
            names, counts = np.unique(values[indices], return_counts=True)
            scores.append((counts.max() / len(indices), attribute, str(names[counts.argmax()])))
        share, attribute, value = max(scores)
        return attribute, value, float(share)

    latents = []
    fired = (codes != 0).sum(0)
    top = codes.detach().topk(top_n, dim=0).indices.T.numpy()  # [d_sae, top_n]
    for j in torch.nonzero(fired >= top_n).squeeze(1).tolist():
        attribute, value, share = best(top[j])
        latents.append({"latent": j, "attribute": attribute, "value": value, "purity": share})
    rng = np.random.default_rng(seed)
    chance = float(np.mean([best(rng.choice(len(attributes), top_n, replace=False))[2] for _ in range(200)]))
    return {"latents": latents, "chance": chance, "top_n": top_n}


def shared_values(attributes, indices, threshold: float = 0.8) -> tuple[float, dict[str, str]]:
    """Of the toy images ``indices`` (into ``attributes``): the largest share of them holding one
    value of one attribute (shape, colour, texture, background), and every attribute held with
    one value by at least ``threshold`` of them (attribute -> value)."""
    best, shared = 0.0, {}
    for name in ATTRIBUTES:
        value, count = collections.Counter(getattr(attributes[i], name) for i in indices).most_common(1)[0]
        best = max(best, count / len(indices))
        if count / len(indices) >= threshold:
            shared[name] = value
    return best, shared


def attribute_names(codes: Float[Tensor, "n d_sae"], world, min_active: int = 10) -> list[str]:
    """A ground-truth name for every latent, to read attributions by: the toy attribute value
    (shape, colour, texture or background) whose images activate the latent most above the other
    images, ``(mean over images with v − mean over the rest) / std``; ``"(rarely active)"`` for a
    latent active on fewer than ``min_active`` images. ``world`` as in :func:`attribute_purity`."""
    attributes = world.attributes() if hasattr(world, "attributes") else list(world)
    table = {a: np.array([getattr(x, a) for x in attributes]) for a in ATTRIBUTES}
    names = []
    for col in codes.detach().double().numpy().T:
        best, gap = "(rarely active)", -np.inf
        if (col != 0).sum() >= min_active:
            for values in table.values():
                for v in dict.fromkeys(values.tolist()):  # first-seen order: ties go to the earlier value
                    g = (col[values == v].mean() - col[values != v].mean()) / (col.std() + 1e-9)
                    best, gap = (v, g) if g > gap else (best, gap)
        names.append(best)
    return names


def evaluate(sae: TopKSAE, residuals: Tensor) -> dict[str, float]:
    """Cosine, LayerNorm-normalised FVU and the dead fraction (never firing) on held-out rows."""
    with torch.no_grad():
        codes = sae.encode(residuals)
        recons = sae.decode(codes)
        num, den = ln_fvu_terms(recons, residuals)
        return {
            "cosine": F.cosine_similarity(recons, residuals, dim=-1).mean().item(),
            "fvu": (num / den).item(),
            "dead_fraction": ((codes != 0).sum(0) == 0).double().mean().item(),
        }


def train_toy(out: str | Path = WEIGHTS, progress: bool = True) -> tuple[TopKSAE, dict]:
    """The recipe (module docstring): train, evaluate and write the autoencoder and its card."""
    from hookedclip import HookedCLIP
    from hookedclip.data import toy_dataset
    from hookedclip.data.extract import extract
    from hookedclip.names import act_name
    from hookedclip.toy.dataset import ToyWorld

    model = HookedCLIP.from_pretrained("toy").eval()
    target = act_name("resid_post", model.cfg.n_layers - 1) + "@0"
    cfg = TrainConfig(**RECIPE["config"], log_every=50, checkpoint_every=0, progress=progress)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = toy_dataset(RECIPE["images"], seed=RECIPE["seed"], split="train")
        store = extract(model, dataset, [target], Path(tmp) / "store", batch_size=512, progress=progress)
        sae, log = train(store, target, cfg, model=model)
    seconds = time.perf_counter() - began
    held_out = ToyWorld(RECIPE["held_out"], seed=RECIPE["seed"], split="test")
    residuals = class_tokens(model, held_out)
    purity = attribute_purity(sae.encode(residuals).detach(), held_out, RECIPE["top_n"])
    shares = [x["purity"] for x in purity["latents"]]
    card = {
        "recipe": RECIPE,
        "model": sae.model_identity,
        "train_seconds": round(seconds, 1),
        "train_final": log.final,
        "held_out": evaluate(sae, residuals),
        "purity": {"mean": float(np.mean(shares)), "chance": purity["chance"], "latents": len(shares)},
    }
    out = Path(out)
    sae.save(out)
    log.save(out / LOG_JSON)
    (out / CARD_JSON).write_text(json.dumps(card, indent=1) + "\n")
    (out / CARD_MD).write_text(card_markdown(card))
    return sae, card


def card_markdown(card: dict) -> str:
    """The autoencoder's card from ``sae_card.json`` (every number read from it)."""
    c, h, p = card["recipe"]["config"], card["held_out"], card["purity"]
    return f"""# Toy autoencoder (`sae.toy()`, `TopKSAE.from_pretrained("toy")`)

A TopK sparse autoencoder on the toy CLIP's class-token residual after its last block
(`visual.blocks.3.hook_resid_post`, position 0): {c["d_sae"]} latents, k = {c["k"]}, the raw top-k rule.

## Recipe (`python -m hookedclip.methods.sae.make_toy`)

- data: the class-token rows of {card["recipe"]["images"]} training-split toy-world images
  (`ToyWorld(split="train", seed={card["recipe"]["seed"]})`), extracted into a store;
- `hookedclip.methods.sae.train` from the store: cosine reconstruction loss, AdamW, {c["steps"]} steps of
  batch {c["batch_size"]} at lr {c["lr"]:g} (the faster mode, not the published batch-32 recipe), the
  learning rate x0.1 at 80% and 93.3% of the steps, gradients clipped to norm 1;
- {card["train_seconds"]:.0f} s on the CPU, extraction included.

## Measured on {card["recipe"]["held_out"]} held-out (test-split) images

| cosine(x̂, h) | FVU of LN(x̂) vs LN(h) | latents that never fire |
|---|---|---|
| {h["cosine"]:.3f} | {h["fvu"]:.3f} | {h["dead_fraction"] * 100:.1f}% |

Of the {p["latents"]} latents that fire on at least {card["recipe"]["top_n"]} held-out images, the
{card["recipe"]["top_n"]} images that activate each one most share one value of one attribute (shape,
colour, texture or background) {p["mean"] * 100:.0f}% of the time on average; for random sets of
{card["recipe"]["top_n"]} images the share is {p["chance"] * 100:.0f}%.

Most latents never fire: like the published recipe, this one has no dead-latent resampling and no
auxiliary loss, so a latent that loses every top-k contest early never receives a gradient again.
"""
