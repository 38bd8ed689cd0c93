"""The hooked CLIP towers and the :class:`HookedCLIP` model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hookedclip.config import CLIPConfig, TextConfig, VisionConfig
from hookedclip.hooks import HookedRootModule, HookPoint
from hookedclip.model.layers import LayerNorm, PatchEmbed, TransformerBlock
from hookedclip.model.stacked import ImageTowerWeights, StackedWeights


class _Tower(StackedWeights, nn.Module):
    """What both towers share: TransformerLens's stacked weight views and the readout into the
    joint space (``hook_pooled``, the projection ``W_proj [d_model, d_out]`` and ``b_proj``,
    zero unless a final LayerNorm was folded in, then ``hook_out``)."""

    def _init_readout(self, d_model: int, d_out: int | None) -> None:
        self.hook_pooled = HookPoint()
        self.W_proj = nn.Parameter(torch.randn(d_model, d_out) * d_model**-0.5) if d_out else None
        self.b_proj = nn.Parameter(torch.zeros(d_out)) if d_out else None
        self.hook_out = HookPoint()

    def project(self, pooled: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_out"]:
        """``hook_pooled``, the projection (if any), ``hook_out``."""
        pooled = self.hook_pooled(pooled)
        if self.W_proj is None:
            return self.hook_out(pooled)
        return self.hook_out(F.linear(pooled, self.W_proj.T, self.b_proj))


class HookedVisionTransformer(_Tower):
    """CLIP's ViT image tower: ``images [batch, C, H, W] -> embeddings [batch, d_out]``.

    Parameters: ``embed`` (patch projection), ``class_embedding [d_model]``,
    ``pos_embed [n_tokens, d_model]``, ``ln_pre``, ``blocks``, ``ln_post``,
    ``W_proj [d_model, d_out]`` and ``b_proj [d_out]`` (zero unless ``ln_post`` was folded in).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.embed = PatchEmbed(d, cfg.patch_size, cfg.in_channels, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(torch.randn(d) * d**-0.5) if cfg.class_token else None
        self.pos_embed = nn.Parameter(torch.randn(cfg.n_tokens, d) * d**-0.5)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.ln_pre = LayerNorm(d, cfg.ln_eps) if cfg.ln_pre else None
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.layers))
        self.ln_post = LayerNorm(d, cfg.ln_eps)
        self._init_readout(d, cfg.output_dim)

    @property
    def ln_final(self) -> LayerNorm:
        """TransformerLens's name for the final LayerNorm (open_clip's ``ln_post``)."""
        return self.ln_post

    def check_images(self, images: Tensor) -> None:
        """Raise a clear error for images the tower cannot take."""
        cfg = self.cfg
        expected = f"[batch, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}]"
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor {expected}, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"images must be 4-D {expected}, got shape {tuple(images.shape)}")
        if images.shape[1] != cfg.in_channels:
            raise ValueError(
                f"images have {images.shape[1]} channels, the model expects {cfg.in_channels}: "
                f"expected {expected}, got {tuple(images.shape)} (channels-last? use .permute(0, 3, 1, 2))"
            )
        if tuple(images.shape[2:]) != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"images are {images.shape[2]}x{images.shape[3]} px, the model expects "
                f"{cfg.image_size}x{cfg.image_size}: resize with `model.preprocess` "
                f"(expected {expected}, got {tuple(images.shape)})"
            )
        _check_dtype_device("images", images, self.embed.W)

    def embed_tokens(self, images: Tensor) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream entering block 0 (after ``ln_pre``)."""
        x = self.embed(images)
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)
        x = self.hook_embed(x) + self.hook_pos_embed(self.pos_embed.expand_as(x))
        return self.ln_pre(x) if self.ln_pre is not None else x

    def pool(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        """``ln_post`` and pooling, in the order the checkpoint uses."""
        if self.cfg.final_ln_after_pool:
            return self.ln_post(self._global_pool(x))
        return self._global_pool(self.ln_post(x))

    def _global_pool(self, x: Tensor) -> Tensor:
        if self.cfg.pool_type == "tok":
            return x[:, 0]
        return x[:, int(self.cfg.class_token) :].mean(dim=1)

    def forward(
        self,
        images: Float[Tensor, "batch channel height width"] | Float[Tensor, "batch pos d_model"],
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
    ) -> Float[Tensor, "batch d_out"] | Float[Tensor, "batch pos d_model"]:
        """Images to embeddings, or part of the way (TransformerLens's partial forwards).

        ``stop_at_layer=l`` returns the residual stream entering block ``l`` (``[batch, pos,
        d_model]``; ``l = n_layers`` is the last block's output, before ``ln_post``).
        ``start_at_layer=l`` takes that residual stream instead of images and runs blocks ``l``
        onward and the readout: the patching idiom.
        """
        n = len(self.blocks)
        start = self._layer_index(start_at_layer, "start_at_layer") if start_at_layer is not None else 0
        stop = self._layer_index(stop_at_layer, "stop_at_layer") if stop_at_layer is not None else n
        if start_at_layer is None:
            self.check_images(images)
            x = self.embed_tokens(images)
        else:
            x = self._check_residual(images, start)
        for block in self.blocks[start:stop]:
            x = block(x)
        if stop_at_layer is not None:
            return x
        return self.project(self.pool(x))

    def _layer_index(self, layer: int, what: str) -> int:
        n = len(self.blocks)
        if not -n <= layer <= n:
            raise ValueError(
                f"{what}={layer} is out of range: the tower has {n} layers (0..{n}, or negative from the end)"
            )
        return layer % n if layer < 0 else layer

    def _check_residual(self, x: Tensor, layer: int) -> Tensor:
        expected = (self.cfg.n_tokens, self.cfg.width)
        if not isinstance(x, Tensor) or x.ndim != 3 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"start_at_layer={layer} takes the residual stream entering that block, [batch, {expected[0]}, "
                f"{expected[1]}], got {got}: get it with stop_at_layer={layer} or cache['resid_pre', {layer}]"
            )
        _check_dtype_device("the residual stream", x, self.embed.W)
        return x


class HookedTextTransformer(_Tower):
    """CLIP's text tower: ``tokens [batch, seq] -> embeddings [batch, d_out]``.

    Parameters: ``W_E [vocab, d_model]``, ``W_pos [context_length, d_model]``, causal
    ``blocks``, ``ln_final``, ``W_proj [d_model, d_out]``, ``b_proj [d_out]``.
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.W_E = nn.Parameter(torch.randn(cfg.vocab_size, d) * 0.02)
        self.W_pos = nn.Parameter(torch.randn(cfg.context_length, d) * 0.01)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(TransformerBlock(cfg, causal=cfg.causal) for _ in range(cfg.layers))
        self.ln_final = LayerNorm(d, cfg.ln_eps)
        self._init_readout(d, cfg.output_dim)

    def check_tokens(self, tokens: Tensor) -> None:
        cfg = self.cfg
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            got = tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__
            raise TypeError(f"tokens must be an integer tensor [batch, seq] (use model.tokenize), got {got}")
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be 2-D [batch, seq], got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > cfg.context_length:
            raise ValueError(
                f"token sequences are {tokens.shape[1]} long, the text tower takes at most "
                f"{cfg.context_length}: truncate or tokenize with `model.tokenize`"
            )
        if tokens.device != self.W_E.device:
            raise ValueError(f"tokens are on {tokens.device}, the model on {self.W_E.device}: move one of them")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {cfg.vocab_size}), got [{int(tokens.min())}, {int(tokens.max())}]"
            )

    def pool_index(self, tokens: Int[Tensor, "batch seq"]) -> Int[Tensor, " batch"]:
        """The position whose final state becomes the text embedding."""
        kind = self.cfg.pool_type
        if kind == "argmax":
            return tokens.argmax(dim=-1)
        if kind == "eos":
            return (tokens == self.cfg.eos_token_id).int().argmax(dim=-1)
        if kind == "first":
            return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)

    def forward(self, tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch d_out"]:
        self.check_tokens(tokens)
        x = self.hook_embed(self.W_E[tokens])
        x = x + self.hook_pos_embed(self.W_pos[: tokens.shape[1]].expand_as(x))
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        return self.project(x[torch.arange(x.shape[0], device=x.device), self.pool_index(tokens)])


def _check_dtype_device(what: str, x: Tensor, param: Tensor) -> None:
    if x.dtype != param.dtype:
        raise TypeError(
            f"{what} are {x.dtype}, the model is {param.dtype}: use `{what}.to({param.dtype})` or `model.to(dtype)`"
        )
    if x.device != param.device:
        raise ValueError(f"{what} are on {x.device}, the model on {param.device}: move one of them")


class HookedCLIP(ImageTowerWeights, HookedRootModule):
    """CLIP with a named hook point on every head, MLP and residual stream.

    ``visual`` is the image tower, ``text`` the text tower (``None`` for vision-only
    checkpoints such as a LLaVA vision tower). Hook names are prefixed by tower:
    ``visual.blocks.3.attn.hook_z``, ``text.blocks.0.hook_resid_post``.
    """

    tokenizer: Callable[..., Tensor] | None
    preprocess: Callable[..., Tensor] | None

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = HookedVisionTransformer(cfg.vision)
        self.text = HookedTextTransformer(cfg.text) if cfg.text is not None else None
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.tokenizer = None
        self.preprocess = None
        self.setup()

    # ------------------------------------------------------------------ forward
    def encode_image(
        self,
        images: Float[Tensor, "batch channel height width"],
        normalize: bool = False,
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
    ) -> Float[Tensor, "batch d_out"]:
        """Image embeddings in the joint space (unnormalised unless ``normalize``).

        ``stop_at_layer`` / ``start_at_layer``: partial forwards, see
        :meth:`HookedVisionTransformer.forward` (``images`` is then the residual stream).
        """
        out = self.visual(images, stop_at_layer=stop_at_layer, start_at_layer=start_at_layer)
        return F.normalize(out, dim=-1) if normalize and stop_at_layer is None else out

    def encode_text(self, tokens: Int[Tensor, "batch seq"], normalize: bool = False) -> Float[Tensor, "batch d_out"]:
        """Text embeddings in the joint space (unnormalised unless ``normalize``)."""
        if self.text is None:
            raise ValueError(f"this model ({self.cfg.model_name}, from {self.cfg.source}) has no text tower")
        out = self.text(tokens)
        return F.normalize(out, dim=-1) if normalize else out

    def forward(
        self,
        images: Tensor | None = None,
        tokens: Tensor | None = None,
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
    ) -> Tensor:
        """With images and tokens: ``logits_per_image [n_images, n_texts]``; with one of them,
        that side's embeddings. ``stop_at_layer`` / ``start_at_layer`` run part of the image
        tower (see :meth:`encode_image`)."""
        partial = stop_at_layer is not None or start_at_layer is not None
        if partial and (tokens is not None or images is None):
            raise ValueError("stop_at_layer / start_at_layer apply to the image tower: call model(images, ...) alone")
        if partial:
            return self.encode_image(images, stop_at_layer=stop_at_layer, start_at_layer=start_at_layer)
        if images is not None and not torch.is_floating_point(images):
            raise TypeError("the first argument is images (a float tensor); for text use `model(tokens=...)`")
        if images is None and tokens is None:
            raise ValueError("give images, tokens, or both")
        if tokens is None:
            return self.encode_image(images)
        if images is None:
            return self.encode_text(tokens)
        img = self.encode_image(images, normalize=True)
        txt = self.encode_text(tokens, normalize=True)
        return self.logit_scale.exp() * img @ txt.T

    # ------------------------------------------------------------------ conveniences
    def tokenize(self, texts: str | list[str]) -> Int[Tensor, "batch seq"]:
        """Tokenize with the source library's tokenizer, on the model's device."""
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer; pass one to the loader (tokenizer=...) or set `model.tokenizer`"
            )
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts).to(self.visual.pos_embed.device)

    @property
    def device(self) -> torch.device:
        return self.visual.pos_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.pos_embed.dtype

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_open_clip(
        cls,
        model_or_name: Any,
        pretrained: str | None = None,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        fold_value_biases: bool = False,
        **kwargs,
    ) -> HookedCLIP:
        """From an ``open_clip`` CLIP instance or model name (random weights when
        ``pretrained`` is None). See :func:`hookedclip.loading.open_clip.from_open_clip`.

        ``fold_ln``, ``center_writing_weights``, ``fold_value_biases``: TransformerLens's
        function-preserving weight processing (:mod:`hookedclip.model.weights`); off by default,
        so hook points show exactly what the source model computes."""
        from hookedclip.loading.open_clip import from_open_clip
        from hookedclip.model.weights import process_weights

        model = from_open_clip(model_or_name, pretrained=pretrained, **kwargs)
        return process_weights(model, fold_ln, center_writing_weights, fold_value_biases)

    @classmethod
    def from_hf(
        cls,
        model: Any,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        fold_value_biases: bool = False,
        **kwargs,
    ) -> HookedCLIP:
        """From a ``transformers`` CLIPModel, CLIPVisionModel(WithProjection) or a LLaVA model
        (its vision tower). See :func:`hookedclip.loading.hf.from_hf`; the weight-processing
        flags as in :meth:`from_open_clip`."""
        from hookedclip.loading.hf import from_hf
        from hookedclip.model.weights import process_weights

        return process_weights(from_hf(model, **kwargs), fold_ln, center_writing_weights, fold_value_biases)

    @classmethod
    def from_pretrained(cls, name: str, **kwargs) -> HookedCLIP:
        """A model shipped with the package: ``"toy"``."""
        if name == "toy":
            from hookedclip.toy.model import load_toy_model

            return load_toy_model(**kwargs)
        raise ValueError(
            f"unknown shipped model {name!r}; the package ships 'toy'. For open_clip or Hugging "
            "Face checkpoints use HookedCLIP.from_open_clip / HookedCLIP.from_hf"
        )

    def save(self, path: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into the directory ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> HookedCLIP:
        """Load a model written by :meth:`save`. The tokenizer and preprocessing are rebuilt
        from the config where the source library provides them offline."""
        from safetensors.torch import load_file

        from hookedclip.loading.common import attach_io

        path = Path(path)
        for name in ("config.json", "model.safetensors"):
            if not (path / name).exists():
                raise FileNotFoundError(f"{path / name} not found: is {path} a directory written by HookedCLIP.save?")
        cfg = CLIPConfig.from_dict(json.loads((path / "config.json").read_text()))
        model = cls(cfg)
        model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
        if cfg.extra.get("ln_folded"):
            for module in model.modules():
                if isinstance(module, LayerNorm) and module is not getattr(model.visual, "ln_pre", None):
                    module.folded = True
        attach_io(model)
        return model.to(device).eval()
