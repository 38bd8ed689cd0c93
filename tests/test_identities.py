"""Algebraic identities of the hooked forward and of the weight rewrites."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import random_tokens, rel_err, tiny_open_clip

from hookedclip import HookedCLIP
from hookedclip.model.weights import W_OV, W_QK, center_writing_weights, fold_ln, fold_value_biases


def _model(seed: int, **kw) -> HookedCLIP:
    return HookedCLIP.from_open_clip(tiny_open_clip(seed=seed, **kw)).double()


def _images(model: HookedCLIP, n: int = 2, seed: int = 0) -> torch.Tensor:
    size = model.cfg.vision.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), layers=st.integers(1, 3), pool=st.sampled_from(["tok", "avg"]))
def test_residual_stream_identities(seed, layers, pool):
    model = _model(seed, layers=layers, pool_type=pool)
    _, cache = model.run_with_cache(_images(model, seed=seed))
    for layer, block in enumerate(model.visual.blocks):
        heads = cache["result", layer].sum(2) + block.attn.b_O
        torch.testing.assert_close(heads, cache["attn_out", layer], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            cache["resid_pre", layer] + cache["attn_out", layer], cache["resid_mid", layer], rtol=0, atol=0
        )
        torch.testing.assert_close(
            cache["resid_mid", layer] + cache["mlp_out", layer], cache["resid_post", layer], rtol=0, atol=0
        )
        z_from_pattern = torch.einsum("bhqk,bkhe->bqhe", cache["pattern", layer], cache["v", layer])
        torch.testing.assert_close(z_from_pattern, cache["z", layer], rtol=1e-10, atol=1e-12)
        if layer + 1 < layers:
            assert torch.equal(cache["resid_post", layer], cache["resid_pre", layer + 1])


def test_result_through_W_OV_matches_hook_result():
    model = _model(4)
    _, cache = model.run_with_cache(_images(model))
    for layer in range(len(model.visual.blocks)):
        attn = model.visual.blocks[layer].attn
        x = cache["ln1", layer]
        from_ov = torch.einsum("bhqk,bkm,hmn->bqhn", cache["pattern", layer], x, W_OV(model, layer))
        from_ov = from_ov + torch.einsum("he,hem->hm", attn.b_V, attn.W_O)
        torch.testing.assert_close(from_ov, cache["result", layer], rtol=1e-9, atol=1e-11)
        scores = torch.einsum("bqm,hmn,bkn->bhqk", x, W_QK(model, layer), x)
        assert W_OV(model, layer).shape == (attn.n_heads, x.shape[-1], x.shape[-1])
        assert scores.shape == cache["attn_scores", layer].shape


def _embeddings(model: HookedCLIP, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.cfg.text
    tokens = random_tokens(3, cfg.context_length, cfg.vocab_size, seed)
    return model.encode_image(_images(model, seed=seed)), model.encode_text(tokens)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    pool=st.sampled_from(["tok", "avg"]),
    final_ln_after_pool=st.booleans(),
    no_ln_pre=st.booleans(),
)
def test_fold_center_rewrites_preserve_embeddings(seed, pool, final_ln_after_pool, no_ln_pre):
    model = _model(seed, pool_type=pool, final_ln_after_pool=final_ln_after_pool, no_ln_pre=no_ln_pre)
    img, txt = _embeddings(model, seed)
    for rewrite in (fold_ln, center_writing_weights, fold_value_biases):
        rewrite(model)
        new_img, new_txt = _embeddings(model, seed)
        assert rel_err(img, new_img) < 1e-10, rewrite.__name__
        assert rel_err(txt, new_txt) < 1e-10, rewrite.__name__
    blocks = list(model.visual.blocks)
    assert all(torch.all(b.ln1.w == 1) and torch.all(b.ln1.b == 0) for b in blocks)
    assert torch.allclose(blocks[0].attn.W_O.sum(-1), torch.zeros(()).double(), atol=1e-12)
    assert torch.allclose(blocks[0].attn.W_V.sum(1), torch.zeros(()).double(), atol=1e-12)
    assert torch.all(blocks[0].attn.b_V == 0)


def test_fold_ln_really_moves_weights():
    """Guard against a fold that silently does nothing: the LN parameters were not trivial."""
    model = _model(2)
    before = model.visual.blocks[0].attn.W_Q.clone()
    assert not torch.allclose(model.visual.blocks[0].ln1.w, torch.ones(()).double())
    fold_ln(model)
    assert not torch.allclose(before, model.visual.blocks[0].attn.W_Q)


def test_centering_makes_residual_zero_mean():
    model = center_writing_weights(_model(6, no_ln_pre=True))
    _, cache = model.run_with_cache(_images(model))
    for layer in range(len(model.visual.blocks)):
        assert cache["resid_post", layer].mean(-1).abs().max() < 1e-12


@pytest.mark.parametrize("head", [0, 3])
def test_zeroing_a_head_by_hook_equals_weight_edit(head):
    model = _model(7)
    images = _images(model)
    layer = 1

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z

    hooked = model.run_with_hooks(images, fwd_hooks=[(f"visual.blocks.{layer}.attn.hook_z", zero_head)])
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.visual.blocks[layer].attn.W_O[head] = 0
    torch.testing.assert_close(hooked, edited.encode_image(images), rtol=1e-10, atol=1e-12)
    assert rel_err(hooked, model.encode_image(images)) > 1e-6
