"""Residual decomposition: the spec's identities (pclens_textspan.md §6, properties 1-6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hookedclip import HookedCLIP
from hookedclip.components import Head, MLP, Embed, parse
from hookedclip.decompose import decompose_image
from hookedclip.weights import fold_ln
from tests.conftest import rel_err, tiny_open_clip

POOLS = [dict(), dict(pool_type="avg"), dict(final_ln_after_pool=True), dict(pool_type="avg", final_ln_after_pool=True)]


def _setup(seed=0, dtype=torch.float64, n=3, **kw):
    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=seed, **kw)).to(dtype)
    size = model.cfg.vision.image_size
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return model, images


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), layers=st.integers(1, 3), pool=st.sampled_from(POOLS),
       ln_mode=st.sampled_from(["reference", "center_each"]), normalize=st.booleans())
def test_rows_sum_to_embedding_fp64(seed, layers, pool, ln_mode, normalize):
    model, images = _setup(seed, layers=layers, **pool)
    e = model.encode_image(images)
    target = F.normalize(e, dim=-1) if normalize else e
    stack = decompose_image(model, images, ln_mode=ln_mode, normalize=normalize)
    assert stack.tensor.shape == (1 + layers * (model.cfg.vision.heads + 1), images.shape[0], e.shape[-1])
    torch.testing.assert_close(stack.sum(), target, rtol=1e-10, atol=1e-12)
    per_token = decompose_image(model, images, tokens="all", ln_mode=ln_mode, normalize=normalize)
    torch.testing.assert_close(per_token.sum_tokens().tensor, stack.tensor, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(per_token.sum().sum(1), target, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pool", POOLS, ids=str)
def test_rows_sum_to_embedding_fp32(pool):
    model, images = _setup(3, dtype=torch.float32, **pool)
    stack = decompose_image(model, images)
    assert rel_err(F.normalize(model.encode_image(images), dim=-1), stack.sum()) < 1e-5


def test_folded_model_bias_row():
    """After fold_ln the projection has a bias: it is the stack's bias row."""
    model, images = _setup(4)
    fold_ln(model)
    assert model.visual.b_proj.abs().max() > 0
    stack = decompose_image(model, images, normalize=False)
    torch.testing.assert_close(stack.sum(), model.encode_image(images), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stack.sum(include_bias=False) + model.visual.b_proj, model.encode_image(images))


def test_head_rows_match_a_materialised_reference():
    """Spec §1.3 computed naively from hook_result at the CLS token (class-token pooling)."""
    model, images = _setup(5)
    visual = model.visual
    _, cache = model.run_with_cache(images)
    L, H = len(visual.blocks), visual.cfg.heads
    x = cache["resid_post", L - 1][:, 0]
    mu, sigma = x.mean(-1, keepdim=True), cache["ln_post_scale"][:, 0]
    gamma, beta, P = visual.ln_post.w, visual.ln_post.b, visual.W_proj
    norm = model.encode_image(images).norm(dim=-1, keepdim=True)
    omega = 1 / ((2 * L + 1) * H)
    stack = decompose_image(model, images)
    for layer in range(L):
        b_O = visual.blocks[layer].attn.b_O
        for h in range(H):
            c = cache["result", layer][:, 0, h] + b_O / H
            expected = (gamma * (c - omega * mu) / sigma + omega * beta) @ P / norm
            torch.testing.assert_close(stack.select(f"L{layer}H{h}").tensor[0], expected, rtol=1e-10, atol=1e-12)
        layer_row = stack.layer_totals().select(lambda s: s == f"attn{layer}").tensor[0]
        attn_out = cache["attn_out", layer][:, 0]
        expected = (gamma * (attn_out - H * omega * mu) / sigma + H * omega * beta) @ P / norm
        torch.testing.assert_close(layer_row, expected, rtol=1e-10, atol=1e-12)


def test_embedding_slot_is_image_independent():
    model, images = _setup(6)
    raw = decompose_image(model, images, target=("resid", 0)).select("embed").tensor[0]
    torch.testing.assert_close(raw, raw[:1].expand_as(raw), rtol=0, atol=1e-14)


def test_conventions_agree_in_sum_differ_in_parts():
    model, images = _setup(7)
    ref = decompose_image(model, images, ln_mode="reference")
    each = decompose_image(model, images, ln_mode="center_each")
    torch.testing.assert_close(ref.sum(), each.sum(), rtol=1e-10, atol=1e-12)
    assert (ref.tensor - each.tensor).abs().max() > 1e-6
    # Property 5: per row they differ by a multiple of (γ/σ) @ P / ‖e‖ (the all-ones direction).
    g = model.visual.ln_post.w @ model.visual.W_proj
    diff = ref.tensor - each.tensor  # [component, batch, d]
    coef = diff @ g / (g @ g)
    torch.testing.assert_close(diff, coef.unsqueeze(-1) * g, rtol=1e-8, atol=1e-12)


def test_batch_independence():
    model, images = _setup(8, n=4)
    together = decompose_image(model, images, tokens="all")
    alone = decompose_image(model, images[2:3], tokens="all")
    torch.testing.assert_close(together.tensor[:, 2:3], alone.tensor, rtol=1e-10, atol=1e-12)


def test_resid_target_matches_hidden_states():
    model, images = _setup(9, layers=3)
    _, cache = model.run_with_cache(images)
    for layer in range(4):
        stack = decompose_image(model, images, target=("resid", layer), tokens="all")
        expected = cache["resid_pre", layer] if layer < 3 else cache["resid_post", 2]
        torch.testing.assert_close(stack.sum(), expected, rtol=1e-10, atol=1e-12)
    cls = decompose_image(model, images, target=("resid", 2))
    torch.testing.assert_close(cls.sum(), cache["resid_pre", 2][:, 0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="0 <= layer <= 3"):
        decompose_image(model, images, target=("resid", 7))


def test_selected_components_keep_the_identity_with_a_rest_row():
    model, images = _setup(10)
    full = decompose_image(model, images)
    some = decompose_image(model, images, components=["L1H2", "mlp0", "L0", "L0H1"])
    assert some.labels == ["L1H2", "mlp0", "L0H0", "L0H1", "L0H2", "L0H3", "rest"]  # request order, no repeats
    per_token = decompose_image(model, images, components=["L1H2", "mlp0"], tokens="all")
    torch.testing.assert_close(per_token.sum().sum(1), full.sum())
    torch.testing.assert_close(some.sum(), full.sum())
    torch.testing.assert_close(some.select("L1H2").tensor, full.select(Head(1, 2)).tensor)
    with pytest.raises(KeyError, match="L1H3"):
        some.select("L1H3")


def test_component_parsing():
    assert parse("L10H3") == [Head(10, 3)]
    assert parse(["mlp9", "embed"]) == [MLP(9), Embed()]
    assert parse("L-1H0", n_layers=12) == [Head(11, 0)]
    assert parse("L8-9", n_layers=12, n_heads=2) == [Head(8, 0), Head(8, 1), Head(9, 0), Head(9, 1)]
    assert str(Head(3, 1)) == "L3H1" and str(MLP(2)) == "mlp2"
    with pytest.raises(ValueError, match="layers 0..11"):
        parse("L12H0", n_layers=12)
    with pytest.raises(ValueError, match="heads 0..11"):
        parse("L1H12", n_layers=12, n_heads=12)
    with pytest.raises(ValueError, match="cannot parse"):
        parse("head7")


@pytest.mark.parametrize("ln_mode", ["reference", "center_each"])
def test_text_rows_sum_to_text_embedding(ln_mode):
    from hookedclip.decompose import decompose_text
    from tests.conftest import random_tokens

    model, _ = _setup(11)
    tokens = random_tokens(4, model.cfg.text.context_length, model.cfg.text.vocab_size, seed=11)
    stack = decompose_text(model, tokens, ln_mode=ln_mode)
    torch.testing.assert_close(stack.sum(), F.normalize(model.encode_text(tokens), dim=-1), rtol=1e-10, atol=1e-12)
    per_token = decompose_text(model, tokens, positions="all", ln_mode=ln_mode)
    torch.testing.assert_close(per_token.sum_tokens().tensor, stack.tensor, rtol=1e-10, atol=1e-12)
    # Causal attention: tokens after the pooled (EOT) one carry only the uniform bias shares.
    eot = tokens.argmax(-1)
    heads = per_token.select(lambda s: s.startswith("L")).tensor
    for b in range(tokens.shape[0]):
        after = heads[:, b, eot[b] + 1 :]
        torch.testing.assert_close(after, after[:, :1].expand_as(after), rtol=0, atol=1e-14)
        assert (heads[:, b, : eot[b] + 1] - heads[:, b, -1:]).abs().max() > 1e-6


def test_memory_bound_is_checked_before_work():
    from hookedclip.decompose import _memory_parts

    model, images = _setup(12)
    output, per_image, per_head = _memory_parts(model, images.shape[0], "all", None)
    with pytest.raises(MemoryError, match="result alone"):
        decompose_image(model, images, tokens="all", max_memory=output - 1)
    with pytest.raises(MemoryError, match="one image with one head"):
        decompose_image(model, images, tokens="all", max_memory=output + per_image)
    with pytest.raises(ValueError, match="px"):
        decompose_image(model, images[:, :, :8])


def test_max_memory_sets_the_chunks_and_keeps_the_result(monkeypatch):
    """Tighter bounds give fewer heads per step, then fewer images per forward pass (as
    actually run: counted at the model's output and in the head step), same rows."""
    from hookedclip import decompose as dec

    model, images = _setup(15, n=5)
    expected = decompose_image(model, images, tokens="all", components=["L0-1", "mlp1"])
    output, per_image, per_head = dec._memory_parts(model, 5, "all", ["L0-1", "mlp1"])
    heads_seen: list[int] = []
    original = dec._Rows.heads
    monkeypatch.setattr(dec._Rows, "heads", lambda self, attn, heads, *a: heads_seen.append(len(heads)) or original(self, attn, heads, *a))
    plans = []
    for per_pass, heads in [(5, 4), (5, 2), (5, 1), (2, 1), (1, 1)]:
        bound = output + per_pass * (per_image + heads * per_head)
        assert dec.plan_chunks(model, 5, "all", ["L0-1", "mlp1"], bound) == (per_pass, heads)
        assert dec.estimate_memory(model, 5, "all", ["L0-1", "mlp1"], per_pass=per_pass, head_chunk=heads) <= bound
        heads_seen.clear()
        passes: list[int] = []
        with model.hooks(fwd_hooks=[("visual.hook_out", lambda x, hook: passes.append(x.shape[0]))]):
            stack = decompose_image(model, images, tokens="all", components=["L0-1", "mlp1"], max_memory=bound)
        plans.append((max(passes), max(heads_seen)))
        assert sum(passes) == 5
        torch.testing.assert_close(stack.tensor, expected.tensor, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(stack.sum(), expected.sum(), rtol=1e-12, atol=1e-14)
    assert plans == [(5, 4), (5, 2), (5, 1), (2, 1), (1, 1)]


def test_to_joint_maps_width_rows_linearly():
    model, images = _setup(13)
    raw = decompose_image(model, images, target=("resid", 2))
    joint = raw.to_joint(model)
    G = model.visual.ln_post.w[:, None] * model.visual.W_proj
    torch.testing.assert_close(joint.tensor, raw.tensor @ G)
    with pytest.raises(ValueError, match="d_model"):
        decompose_image(model, images).to_joint(model)


def test_top1_is_scale_invariant():
    """Property 19: dividing by ‖e‖ (or normalising reconstructions) never changes top-1."""
    model, images = _setup(14, n=6)
    W = F.normalize(torch.randn(16, 5, dtype=torch.float64), dim=0)
    normed = decompose_image(model, images).sum() @ W
    raw = decompose_image(model, images, normalize=False).sum() @ W
    assert torch.equal(normed.argmax(-1), raw.argmax(-1))
    assert torch.equal(F.normalize(raw, dim=-1).argmax(-1), raw.argmax(-1))
