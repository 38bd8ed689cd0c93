"""Configuration dataclasses for the two towers and the whole CLIP model.

Every architectural option that a supported checkpoint uses is a field here; the
loaders fill them from the source library's model, and ``save``/``load`` round-trip
them through JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Act = Literal["gelu", "quick_gelu"]


@dataclass
class TransformerConfig:
    """Fields shared by both towers."""

    width: int  # d_model
    layers: int  # n_layers
    heads: int  # n_heads
    d_mlp: int
    output_dim: int | None = None  # d_out of the projection into joint space; None = no projection
    act_fn: Act = "gelu"
    ln_eps: float = 1e-5

    @property
    def d_model(self) -> int:
        return self.width

    @property
    def n_heads(self) -> int:
        return self.heads

    @property
    def n_layers(self) -> int:
        return self.layers

    @property
    def d_head(self) -> int:
        return self.width // self.heads

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.act_fn not in ("gelu", "quick_gelu"):
            raise NotImplementedError(f"activation {self.act_fn!r} is not supported (gelu, quick_gelu are)")


@dataclass
class VisionConfig(TransformerConfig):
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    class_token: bool = True
    ln_pre: bool = True
    pool_type: Literal["tok", "avg"] = "tok"
    final_ln_after_pool: bool = False  # ln_post after pooling (HF, some open_clip configs)
    patch_bias: bool = False

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid_size**2

    @property
    def n_tokens(self) -> int:
        return self.n_patches + int(self.class_token)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.pool_type not in ("tok", "avg"):
            raise NotImplementedError(f"vision pool_type {self.pool_type!r} is not supported (tok, avg are)")
        if self.pool_type == "tok" and not self.class_token:
            raise ValueError("pool_type='tok' needs a class token")


@dataclass
class TextConfig(TransformerConfig):
    context_length: int = 77
    vocab_size: int = 49408
    causal: bool = True
    # How the pooled token is chosen: "argmax" = position of the largest token id (open_clip
    # and OpenAI: EOT has the largest id), "eos" = first occurrence of eos_token_id (HF),
    # "first" / "last".
    pool_type: Literal["argmax", "eos", "first", "last"] = "argmax"
    eos_token_id: int | None = None
    proj_bias: bool = False


@dataclass
class CLIPConfig:
    vision: VisionConfig
    text: TextConfig | None = None
    model_name: str = "custom"  # e.g. "ViT-B-16", or an HF model type
    source: str = "custom"  # "open_clip", "hf", "toy", "custom"
    pretrained: str | None = None
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    init_logit_scale: float = 4.6052  # log(100)
    extra: dict[str, Any] = field(default_factory=dict)

    # TransformerLens's names, for the image tower (``cfg.vision`` / ``cfg.text`` for either).
    n_layers = property(lambda self: self.vision.layers, doc="image tower layers")
    d_model = property(lambda self: self.vision.width, doc="image tower width")
    n_heads = property(lambda self: self.vision.heads, doc="image tower heads per layer")
    d_head = property(lambda self: self.vision.d_head, doc="image tower head width")
    d_mlp = property(lambda self: self.vision.d_mlp, doc="image tower MLP width")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        d = dict(d)
        d["vision"] = VisionConfig(**d["vision"])
        d["text"] = TextConfig(**d["text"]) if d.get("text") else None
        for key in ("image_mean", "image_std"):
            d[key] = tuple(d[key])
        return cls(**d)

    def hash(self) -> str:
        """A short stable hash of the architecture (used by stores to refuse mismatches)."""
        arch = {"vision": dataclasses.asdict(self.vision)}
        if self.text is not None:
            arch["text"] = dataclasses.asdict(self.text)
        blob = json.dumps(arch, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
