"""Residual decomposition: the rows sum to the embedding, match a naive computation, the embedding
slot is image-independent, both LayerNorm conventions agree in sum, and images decompose alone as in a batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import rel_err, tiny_open_clip

from hookedclip import HookedCLIP
from hookedclip.components import MLP, Embed, Head, parse
from hookedclip.decompose import decompose_image
from hookedclip.model.weights import fold_ln

POOLS = [dict(), dict(pool_type="avg"), dict(final_ln_after_pool=True), dict(pool_type="avg", final_ln_after_pool=True)]


def _setup(seed=0, dtype=torch.float64, n=3, **kw):
    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=seed, **kw)).to(dtype)
    size = model.cfg.vision.image_size
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return model, images


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    layers=st.integers(1, 3),
    pool=st.sampled_from(POOLS),
    ln_mode=st.sampled_from(["reference", "center_each"]),
    normalize=st.booleans(),
)
def test_rows_sum_to_embedding_fp64(seed, layers, pool, ln_mode, normalize):
    model, images = _setup(seed, layers=layers, **pool)
    e = model.encode_image(images)
    target = F.normalize(e, dim=-1) if normalize else e
    stack = decompose_image(model, images, ln_mode=ln_mode, normalize=normalize)
    assert stack.tensor.shape == (1 + layers * (model.cfg.vision.heads + 1), images.shape[0], e.shape[-1])
    torch.testing.assert_close(stack.sum(), target, rtol=1e-10, atol=1e-12)
    per_token = decompose_image(model, images, positions="all", ln_mode=ln_mode, normalize=normalize)
    torch.testing.assert_close(per_token.sum_tokens().tensor, stack.tensor, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(per_token.sum().sum(1), target, rtol=1e-10, atol=1e-12)


@st.composite
def tiny_configs(draw):
    """Tiny CLIPs of every small shape: 1-4 heads, head width 4 or 8, patch 4 or 8, 16-32 px, output dim 4-40."""
    heads, head_width = draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([4, 8]))
    patch = draw(st.sampled_from([4, 8]))
    image = patch * draw(st.integers(16 // patch, 32 // patch))
    return dict(
        layers=draw(st.integers(1, 3)),
        width=heads * head_width,
        head_width=head_width,
        patch_size=patch,
        image_size=image,
        embed_dim=draw(st.integers(4, 40)),
        **draw(st.sampled_from(POOLS)),
    )


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    config=tiny_configs(),
    ln_mode=st.sampled_from(["reference", "center_each"]),
    positions=st.sampled_from(["cls", "all"]),
)
def test_rows_sum_to_embedding_fp32(seed, config, ln_mode, positions):
    """The rows sum to the unit embedding in fp32 too (1e-5 relative), with both ln_post conventions."""
    model, images = _setup(seed, dtype=torch.float32, **config)
    stack = decompose_image(model, images, ln_mode=ln_mode, positions=positions)
    total = stack.sum() if positions == "cls" else stack.sum().sum(1)
    assert rel_err(F.normalize(model.encode_image(images), dim=-1), total) < 1e-5


def test_folded_model_bias_row():
    """After fold_ln the projection has a bias: it is the stack's bias row."""
    model, images = _setup(4)
    fold_ln(model)
    assert model.visual.b_proj.abs().max() > 0
    stack = decompose_image(model, images, normalize=False)
    torch.testing.assert_close(stack.sum(), model.encode_image(images), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stack.sum(include_bias=False) + model.visual.b_proj, model.encode_image(images))


@pytest.mark.parametrize("ln_mode", ["reference", "center_each"])
def test_rows_match_a_materialised_reference(ln_mode):
    """Each row φ_c = (γ ⊙ (c − ω_c μ) / σ + ω_c β) P / ‖e‖ computed naively (class-token
    pooling; ``center_each`` centres c by its own mean): heads from hook_result at the CLS
    token and, per source token, from pattern and values; MLP and embedding slots from
    their hooks; the layer total from the attention output."""
    model, images = _setup(5)
    visual = model.visual
    _, cache = model.run_with_cache(images)
    L, H, T = len(visual.blocks), visual.cfg.heads, visual.cfg.n_tokens
    x = cache["resid_post", L - 1][:, 0]
    mu, sigma = x.mean(-1, keepdim=True), cache["ln_post_scale"][:, 0]
    gamma, beta, P = visual.ln_post.w, visual.ln_post.b, visual.W_proj
    norm = model.encode_image(images).norm(dim=-1, keepdim=True)
    n_c = 2 * L + 1

    def phi(c, omega):  # c [..., batch, d_model]
        centre = omega * mu if ln_mode == "reference" else c.mean(-1, keepdim=True)
        return (gamma * (c - centre) / sigma + omega * beta) @ P / norm

    stack = decompose_image(model, images, ln_mode=ln_mode)
    per_token = decompose_image(model, images, positions="all", ln_mode=ln_mode)
    row = lambda st_, label: st_.select(label).tensor[0]  # noqa: E731
    close = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(row(stack, "embed"), phi(cache["resid_pre", 0][:, 0], 1 / n_c), **close)
    for layer in range(L):
        attn = visual.blocks[layer].attn
        torch.testing.assert_close(row(stack, f"mlp{layer}"), phi(cache["mlp_out", layer][:, 0], 1 / n_c), **close)
        slot = row(per_token, f"mlp{layer}")  # per token: a slot enters the readout at the CLS position only
        torch.testing.assert_close(slot[:, 0], row(stack, f"mlp{layer}"), **close)
        torch.testing.assert_close(slot[:, 1:], torch.zeros_like(slot[:, 1:]), rtol=0, atol=0)
        for h in range(H):
            c = cache["result", layer][:, 0, h] + attn.b_O / H
            torch.testing.assert_close(row(stack, f"L{layer}H{h}"), phi(c, 1 / (n_c * H)), **close)
            alpha = cache["pattern", layer][:, h, 0]  # [batch, T]: the CLS query's attention
            c_t = alpha[..., None] * (cache["v", layer][:, :, h] @ attn.W_O[h]) + attn.b_O / (
                H * T
            )  # [batch, T, d_model]
            expected = torch.stack([phi(c_t[:, t], 1 / (n_c * H * T)) for t in range(T)], dim=1)
            torch.testing.assert_close(row(per_token, f"L{layer}H{h}"), expected, **close)
        layer_row = stack.layer_totals().select(lambda s, layer=layer: s == f"attn{layer}").tensor[0]
        attn_out = cache["attn_out", layer][:, 0]
        torch.testing.assert_close(layer_row, phi(attn_out, H / (n_c * H)), **close)  # H head shares


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), config=tiny_configs())
def test_embedding_slot_is_image_independent(seed, config):
    """The raw embedding slot m^0 at the class token is the same for any image."""
    model, images = _setup(seed, **config)
    raw = decompose_image(model, images, target=("resid", 0)).select("embed").tensor[0]
    torch.testing.assert_close(raw, raw[:1].expand_as(raw), rtol=0, atol=1e-14)
    assert raw.abs().max() > 1e-3


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), layers=st.integers(1, 3))
def test_conventions_agree_in_sum_differ_in_parts(seed, layers):
    """The two LayerNorm conventions give the same total; per row they differ by (mean(c) − ω μ) (γ/σ) @ P / ‖e‖."""
    model, images = _setup(seed, layers=layers)
    ref = decompose_image(model, images, ln_mode="reference")
    each = decompose_image(model, images, ln_mode="center_each")
    torch.testing.assert_close(ref.sum(), each.sum(), rtol=1e-10, atol=1e-12)
    assert (ref.tensor - each.tensor).abs().max() > 1e-6
    visual = model.visual
    _, cache = model.run_with_cache(images)
    x = cache["resid_post", layers - 1][:, 0]
    mu, sigma = x.mean(-1), cache["ln_post_scale"][:, 0, 0]
    norm = model.encode_image(images).norm(dim=-1)
    raw = decompose_image(model, images, target=("resid", layers)).tensor  # [component, batch, d_model] at CLS
    H = visual.cfg.heads
    omega = torch.tensor(
        [1 / ((2 * layers + 1) * (H if isinstance(c, Head) else 1)) for c in ref.components], dtype=torch.float64
    )
    coef = (raw.mean(-1) - omega[:, None] * mu) / (sigma * norm)  # [component, batch]
    g = visual.ln_post.w @ visual.W_proj
    torch.testing.assert_close(ref.tensor - each.tensor, coef.unsqueeze(-1) * g, rtol=1e-8, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(2, 5),
    data=st.data(),
    positions=st.sampled_from(["cls", "all"]),
    pool=st.sampled_from(POOLS),
    ln_mode=st.sampled_from(["reference", "center_each"]),
)
def test_batch_independence(seed, n, data, positions, pool, ln_mode):
    """Decomposing an image alone equals decomposing it inside any batch."""
    model, images = _setup(seed, n=n, **pool)
    i = data.draw(st.integers(0, n - 1))
    together = decompose_image(model, images, positions=positions, ln_mode=ln_mode)
    alone = decompose_image(model, images[i : i + 1], positions=positions, ln_mode=ln_mode)
    torch.testing.assert_close(together.tensor[:, i : i + 1], alone.tensor, rtol=1e-10, atol=1e-12)


def test_resid_target_matches_hidden_states():
    model, images = _setup(9, layers=3)
    _, cache = model.run_with_cache(images)
    for layer in range(4):
        stack = decompose_image(model, images, target=("resid", layer), positions="all")
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
    per_token = decompose_image(model, images, components=["L1H2", "mlp0"], positions="all")
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
    from tests.conftest import random_tokens

    from hookedclip.decompose import decompose_text

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
    output, per_image, per_head = _memory_parts(model, images.shape[0], "all", "all")  # every component, the default
    with pytest.raises(MemoryError, match="result alone"):
        decompose_image(model, images, positions="all", max_memory=output - 1)
    with pytest.raises(MemoryError, match="one image with one head"):
        decompose_image(model, images, positions="all", max_memory=output + per_image)
    with pytest.raises(ValueError, match="px"):
        decompose_image(model, images[:, :, :8])


def test_max_memory_sets_the_chunks_and_keeps_the_result(monkeypatch):
    """Tighter bounds give fewer heads per step, then fewer images per forward pass (as
    actually run: counted at the model's output and in the head step), same rows."""
    from hookedclip import decompose as dec

    model, images = _setup(15, n=5)
    expected = decompose_image(model, images, positions="all", components=["L0-1", "mlp1"])
    output, per_image, per_head = dec._memory_parts(model, 5, "all", ["L0-1", "mlp1"])
    heads_seen: list[int] = []
    original = dec._Rows.heads
    monkeypatch.setattr(
        dec._Rows,
        "heads",
        lambda self, attn, heads, *a: heads_seen.append(len(heads)) or original(self, attn, heads, *a),
    )
    plans = []
    for per_pass, heads in [(5, 4), (5, 2), (5, 1), (2, 1), (1, 1)]:
        bound = output + per_pass * (per_image + heads * per_head)
        assert dec.plan_chunks(model, 5, positions="all", components=["L0-1", "mlp1"], max_memory=bound) == (
            per_pass,
            heads,
        )
        assert dec.estimate_memory(model, 5, "all", ["L0-1", "mlp1"], per_pass=per_pass, head_chunk=heads) <= bound
        heads_seen.clear()
        passes: list[int] = []
        with model.hooks(fwd_hooks=[("visual.hook_out", lambda x, hook, passes=passes: passes.append(x.shape[0]))]):
            stack = decompose_image(model, images, positions="all", components=["L0-1", "mlp1"], max_memory=bound)
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


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_classes=st.integers(2, 8),
    ablated=st.sets(st.sampled_from(["L0H1", "L1H0", "L1H3", "mlp1", "embed"]), min_size=1),
)
def test_top1_is_scale_invariant(seed, n_classes, ablated):
    """Top-1 of mean-ablated reconstructions is the same from normalised rows,
    from unnormalised rows, normalised or not before ``@ W_cls``, and from the direct-mode
    context (which returns ‖e‖ times the reconstruction)."""
    from hookedclip import ablation

    model, images = _setup(seed, n=6)
    W = F.normalize(
        torch.randn(16, n_classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=0
    )
    labels = sorted(ablated)
    means = ablation.component_means(model, [images], labels, mode="direct")
    normed, raw = decompose_image(model, images), decompose_image(model, images, normalize=False)
    norm = model.encode_image(images).norm(dim=-1, keepdim=True)
    mean_rows = torch.stack([means[c] for c in labels]).sum(0)
    from_normed = normed.sum() - normed.select(labels).tensor.sum(0) + mean_rows
    from_raw = raw.sum() - raw.select(labels).tensor.sum(0) + norm * mean_rows
    with ablation.mean_ablate(model, labels, means, mode="direct"):
        from_context = model.encode_image(images)
    top1 = [(e @ W).argmax(-1) for e in (from_normed, from_raw, F.normalize(from_raw, dim=-1), from_context)]
    assert all(torch.equal(t, top1[0]) for t in top1)
    torch.testing.assert_close(from_raw, norm * from_normed, rtol=1e-10, atol=1e-12)


def test_norms_are_row_lengths():
    model, images = _setup(16)
    stack = decompose_image(model, images, positions="all", components=["L1H2", "mlp0"])
    norms = stack.norms()
    assert norms.shape == stack.tensor.shape[:-1]
    torch.testing.assert_close(norms[0, 1, 3], stack.tensor[0, 1, 3].pow(2).sum().sqrt())
    cls = decompose_image(model, images)
    torch.testing.assert_close(cls.norms().pow(2).sum(0), cls.tensor.pow(2).sum((0, 2)))


@pytest.mark.parametrize("positions", ["cls", "all"])
def test_stack_from_cache_under_autograd_matches_and_backpropagates(positions):
    """Attribution code decomposes a forward that records gradients: the rows must be the
    no-grad rows and carry gradients back to the image."""
    from hookedclip.decompose import stack_from_cache

    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=1)).double()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    heads = [f"L{l}" for l in range(len(model.visual.blocks))]
    with model.cache() as cache:
        emb = model.encode_image(images)
    stack = stack_from_cache(model, "visual", images, dict(cache), emb, positions=positions, components=heads)
    expected = decompose_image(model, images.detach(), positions=positions, components=heads)
    torch.testing.assert_close(stack.tensor.detach(), expected.tensor, rtol=1e-10, atol=1e-12)
    stack.tensor[:-1].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
