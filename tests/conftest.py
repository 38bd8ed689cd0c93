"""Shared fixtures: tiny open_clip models with every parameter randomised.

open_clip initialises LayerNorm weights to one and most biases to zero; conversion bugs
in exactly those tensors would go unseen, so ``randomize_`` perturbs every 1-D parameter.
"""

from __future__ import annotations

import open_clip
import pytest
import torch

from hookedclip import HookedCLIP


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every vector parameter (LayerNorm w/b, biases, layer scale, class token) in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim <= 1 and p.numel() > 1:
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * scale
                if name.endswith(("weight", "gamma")) and "proj" not in name:
                    p.copy_(1.0 + noise)  # LayerNorm / layer-scale gains stay near one
                else:
                    p.add_(noise)
    return model


def tiny_open_clip(
    seed: int = 0,
    *,
    layers: int = 2,
    width: int = 32,
    head_width: int = 8,
    patch_size: int = 4,
    image_size: int = 16,
    embed_dim: int = 16,
    quick_gelu: bool = False,
    text_layers: int = 2,
    context_length: int = 12,
    vocab_size: int = 100,
    **vision_kw,
) -> open_clip.CLIP:
    """A tiny randomly initialised open_clip CLIP (fp32, eval mode)."""
    torch.manual_seed(seed)
    vision = dict(layers=layers, width=width, head_width=head_width, patch_size=patch_size, image_size=image_size)
    vision.update(vision_kw)
    text = dict(
        context_length=context_length, vocab_size=vocab_size, width=width, heads=width // head_width, layers=text_layers
    )
    model = open_clip.CLIP(embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu)
    return randomize_(model, seed).eval()


def random_tokens(n: int, context_length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """Token ids shaped like open_clip's: SOT, random words, EOT (the largest id), zero padding."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, context_length, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(1, context_length - 1, (1,), generator=gen))
        tokens[i, 0] = vocab_size - 2
        tokens[i, 1 : length + 1] = torch.randint(1, vocab_size - 2, (length,), generator=gen)
        tokens[i, length + 1] = vocab_size - 1
    return tokens


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


@pytest.fixture(scope="session")
def tiny_pair() -> tuple[open_clip.CLIP, HookedCLIP]:
    source = tiny_open_clip(seed=1)
    return source, HookedCLIP.from_open_clip(source)


@pytest.fixture
def tiny_model(tiny_pair) -> HookedCLIP:
    return tiny_pair[1]


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
