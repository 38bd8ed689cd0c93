"""The shipped toy CLIP: a tiny open_clip ``CLIP`` trained on the procedural toy world.

The architecture is plain open_clip config dicts, so the model is built with open_clip's own
classes and loaded through :meth:`HookedCLIP.from_open_clip` (the real conversion path).

Weights file (``weights/toy_clip.safetensors``): the open_clip state dict, except that the
49408-row token embedding is stored sparsely: ``token_embedding.rows`` (int64 row ids) and
``token_embedding.values`` (their fp32 rows) hold only the rows that training changed. Every
other row is still exactly at its seeded initialisation (the embedding is trained with Adam
and no weight decay, so rows whose gradient is always zero never move) and is regenerated
from ``card.json``'s seed by :func:`init_token_embedding`. ``card.json`` also records a
SHA-256 of the full table, checked at load time.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hookedclip.toy.world import WORLD_VERSION

TOY_EMBED_DIM = 128
TOY_VISION_CFG: dict[str, Any] = {
    "layers": 4,
    "width": 128,
    "head_width": 32,  # 4 heads
    "mlp_ratio": 4.0,
    # 32 px -> 4 x 4 = 16 patches (+ class token). Patch 4 (64 patches) learned colour and
    # texture at once but shape stayed at chance for 900 steps, even supervised; patch 8
    # learns shape within a few hundred steps and trains 4x faster.
    "patch_size": 8,
    "image_size": 32,
}
TOY_TEXT_CFG: dict[str, Any] = {
    "context_length": 20,  # the longest caption / prompt is 19 tokens with SOT and EOT
    "vocab_size": 49408,  # open_clip's SimpleTokenizer (OpenAI CLIP BPE)
    "width": 128,
    "heads": 4,
    "layers": 2,
    "mlp_ratio": 4.0,
}
# Normalisation used in training: pixel / 255, then (x - mean) / std.
TOY_IMAGE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
TOY_IMAGE_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)
TOY_SEED = 0
TOKEN_EMBEDDING_STD = 0.02  # open_clip's init std of the token embedding

WEIGHTS_FILE = "toy_clip.safetensors"
CARD_FILE = "card.json"
TOKEN_KEY = "token_embedding.weight"
ROWS_KEY, VALUES_KEY = "token_embedding.rows", "token_embedding.values"


def init_token_embedding(vocab_size: int, width: int, seed: int) -> torch.Tensor:
    """The seeded initial token embedding ``[vocab_size, width]`` (independent of open_clip's
    init order, so untouched rows can be regenerated exactly)."""
    gen = torch.Generator().manual_seed(int(seed) + 1_000_003)
    return torch.randn(vocab_size, width, generator=gen, dtype=torch.float32) * TOKEN_EMBEDDING_STD


def build_open_clip_toy(
    seed: int = TOY_SEED,
    *,
    embed_dim: int = TOY_EMBED_DIM,
    vision_cfg: dict[str, Any] | None = None,
    text_cfg: dict[str, Any] | None = None,
):
    """A freshly initialised ``open_clip.CLIP`` with the toy architecture (fp32, train mode).

    Initialisation is a pure function of ``seed`` and leaves the global torch RNG untouched.
    """
    import open_clip

    vision_cfg = dict(TOY_VISION_CFG if vision_cfg is None else vision_cfg)
    text_cfg = dict(TOY_TEXT_CFG if text_cfg is None else text_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = open_clip.CLIP(embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    with torch.no_grad():
        emb = model.token_embedding.weight
        emb.copy_(init_token_embedding(emb.shape[0], emb.shape[1], seed))
    model.visual.preprocess_cfg = {"mean": TOY_IMAGE_MEAN, "std": TOY_IMAGE_STD}
    return model


def images_to_tensor(
    images: np.ndarray,
    mean: tuple[float, float, float] = TOY_IMAGE_MEAN,
    std: tuple[float, float, float] = TOY_IMAGE_STD,
) -> torch.Tensor:
    """uint8 images ``[N, H, W, 3]`` (or one ``[H, W, 3]``) -> float32 ``[N, 3, H, W]``,
    normalised exactly as in training (and as ``model.preprocess`` does for PIL images)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (as rendered by the toy world), got {images.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32).div(255)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub(m).div(s)


# --------------------------------------------------------------------------- weights files


def table_hash(table: torch.Tensor) -> str:
    """SHA-256 (hex) of a float32 tensor's bytes."""
    return hashlib.sha256(table.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def pack_state(model, seed: int) -> dict[str, torch.Tensor]:
    """The open_clip state dict with the token embedding stored sparsely (changed rows only)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    table = state.pop(TOKEN_KEY)
    init = init_token_embedding(table.shape[0], table.shape[1], seed)
    rows = torch.nonzero((table != init).any(dim=1)).flatten()
    state[ROWS_KEY] = rows.to(torch.int64)
    state[VALUES_KEY] = table[rows].contiguous()
    return state


def unpack_state(state: dict[str, torch.Tensor], seed: int, vocab_size: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_state`: the full open_clip state dict."""
    state = dict(state)
    rows, values = state.pop(ROWS_KEY), state.pop(VALUES_KEY)
    table = init_token_embedding(vocab_size, values.shape[1], seed)
    table[rows] = values.to(torch.float32)
    state[TOKEN_KEY] = table
    return state


def weights_dir() -> Path:
    """Directory of the shipped checkpoint (package data)."""
    return Path(str(resources.files("hookedclip.toy") / "weights"))


def read_card(directory: str | Path | None = None) -> dict:
    """The ``card.json`` of the shipped checkpoint (or of ``directory``)."""
    path = Path(directory or weights_dir()) / CARD_FILE
    if not path.exists():
        raise FileNotFoundError(_missing_message(path))
    return json.loads(path.read_text())


def _missing_message(path: Path) -> str:
    return (
        f"toy CLIP weights not found: {path} is missing. Retrain them with `hookedclip toy train` "
        "(about 20 minutes on 2 CPU cores; it writes toy_clip.safetensors and card.json into "
        "--out, by default ./toy_clip_run; copy them into hookedclip/toy/weights to replace the shipped "
        "model), or reinstall the package."
    )


def load_open_clip_toy(directory: str | Path | None = None, device: str | torch.device = "cpu"):
    """The trained toy model as an ``open_clip.CLIP`` (eval mode) and its card."""
    from safetensors.torch import load_file

    directory = Path(directory or weights_dir())
    path = directory / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(_missing_message(path))
    card = read_card(directory)
    arch = card["config"]
    model = build_open_clip_toy(
        card["seed"], embed_dim=arch["embed_dim"], vision_cfg=arch["vision_cfg"], text_cfg=arch["text_cfg"]
    )
    state = unpack_state(load_file(str(path)), card["seed"], arch["text_cfg"]["vocab_size"])
    expected = card.get("token_embedding_sha256")
    if expected is not None and table_hash(state[TOKEN_KEY]) != expected:
        raise RuntimeError(
            f"the token embedding rebuilt from {path} does not match the trained one (sha256 "
            "mismatch): the seeded initialisation differs on this torch version. Retrain with "
            "`hookedclip toy train`."
        )
    model.load_state_dict(state)
    mean, std = tuple(card.get("image_mean", TOY_IMAGE_MEAN)), tuple(card.get("image_std", TOY_IMAGE_STD))
    model.visual.preprocess_cfg = {"mean": mean, "std": std}
    return model.to(device).eval(), card


def load_toy_model(device: str | torch.device = "cpu", weights: str | Path | None = None):
    """The shipped toy CLIP as a :class:`~hookedclip.HookedCLIP` (``HookedCLIP.from_pretrained("toy")``).

    ``weights``: a directory written by ``hookedclip toy train`` instead of the shipped one.
    Images must be normalised like in training: use :func:`images_to_tensor` (uint8 arrays
    from the toy world) or ``model.preprocess`` (PIL images).
    """
    from hookedclip.loading.common import attach_io
    from hookedclip.model.hooked import HookedCLIP

    source, card = load_open_clip_toy(weights)
    source.hookedclip_name = "toy"
    model = HookedCLIP.from_open_clip(source, device=device)
    cfg = model.cfg
    cfg.model_name, cfg.source = "toy", "toy"
    cfg.pretrained = f"toy-world-v{card['world_version']}/{card['checkpoint_id']}"
    cfg.image_mean = tuple(card.get("image_mean", TOY_IMAGE_MEAN))
    cfg.image_std = tuple(card.get("image_std", TOY_IMAGE_STD))
    cfg.extra["toy_card"] = {k: card[k] for k in ("checkpoint_id", "world_version", "seed", "steps") if k in card}
    attach_io(model)
    return model


__all__ = [
    "TOY_EMBED_DIM",
    "TOY_VISION_CFG",
    "TOY_TEXT_CFG",
    "TOY_IMAGE_MEAN",
    "TOY_IMAGE_STD",
    "WORLD_VERSION",
    "build_open_clip_toy",
    "images_to_tensor",
    "load_toy_model",
    "load_open_clip_toy",
    "read_card",
]
