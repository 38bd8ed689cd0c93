"""TransformerLens habits replayed on HookedCLIP: each test names the TL behaviour it checks.

Run on the shipped toy model and on tiny / ViT-B-32 models with random weights.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP


@pytest.fixture(scope="module")
def toy() -> HookedCLIP:
    return HookedCLIP.from_pretrained("toy")


@pytest.fixture(scope="module")
def toy_images(toy) -> torch.Tensor:
    size = toy.cfg.vision.image_size
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny() -> HookedCLIP:
    return HookedCLIP.from_open_clip(tiny_open_clip(seed=3))


def tiny_images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before: dict[str, torch.Tensor]) -> None:
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f"hooks changed parameters: {changed}"


def zero_inplace(act, hook):
    act[:] = 0
    return act


# ------------------------------------------------------------------ no hook can damage the model
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_inplace_edit_at_every_hook_point_leaves_parameters_alone(tiny, grad, batch):
    """TL idiom ``act[:] = 0; return act`` at each hook point, batch 1 and >1, with and without
    autograd: parameters stay bit-identical and the edit equals the same edit by replacement."""
    before = snapshot(tiny)
    images = tiny_images(batch)
    tokens = torch.randint(1, 90, (batch, 12))
    for name in tiny.hook_points():
        kwargs = {"images": images} if name.startswith("visual") else {"tokens": tokens}
        with torch.set_grad_enabled(grad):
            inplace = tiny.run_with_hooks(**kwargs, fwd_hooks=[(name, zero_inplace)])
            replaced = tiny.run_with_hooks(**kwargs, fwd_hooks=[(name, lambda x, hook: torch.zeros_like(x))])
        torch.testing.assert_close(inplace, replaced, equal_nan=True, msg=name)
        if grad and inplace.requires_grad:
            inplace.sum().backward()
        assert_unchanged(tiny, before)
    tiny.zero_grad(set_to_none=True)


def test_pos_embed_hook_gets_a_copy_not_the_parameter(tiny):
    """TL's hook_pos_embed hands out a fresh tensor; ours did hand out ``pos_embed.expand_as(x)``."""
    seen = {}

    def grab(act, hook):
        seen[hook.name] = act

    with torch.no_grad():
        tiny.run_with_hooks(tiny_images(1), fwd_hooks=[("visual.hook_pos_embed", grab)])
    assert seen["visual.hook_pos_embed"].data_ptr() != tiny.visual.pos_embed.data_ptr()


@pytest.mark.parametrize("point", ["q", "k", "v", "z", "pattern", "result"])
def test_inplace_head_ablation_with_gradients(tiny, point):
    """TL's ``act[:, :, h] = 0; return act`` on hook_q/k/v (views of one fused tensor here)
    works with autograd on, and gradients flow."""
    head = 1

    def ablate(act, hook):
        if point == "pattern":
            act[:, head] = 0
        else:
            act[:, :, head] = 0
        return act

    images = tiny_images(2).requires_grad_(True)
    name = f"visual.blocks.0.attn.hook_{point}"
    out = tiny.run_with_hooks(images, fwd_hooks=[(name, ablate)])
    out.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()

    def replace(act, hook):
        act = act.clone()
        if point == "pattern":
            act[:, head] = 0
        else:
            act[:, :, head] = 0
        return act

    torch.testing.assert_close(out, tiny.run_with_hooks(images, fwd_hooks=[(name, replace)]))


@settings(max_examples=15, deadline=None)
@given(
    points=st.lists(
        st.sampled_from(
            [
                "hook_resid_pre",
                "attn.hook_q",
                "attn.hook_v",
                "attn.hook_z",
                "ln1.hook_normalized",
                "mlp.hook_post",
                "hook_resid_post",
            ]
        ),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    layer=st.integers(0, 1),
    batch=st.integers(1, 3),
    scale=st.floats(-2, 2),
)
def test_inplace_scaling_equals_replacement(points, layer, batch, scale):
    """Property: any set of in-place edits equals the same edits made by replacement, and leaves
    the parameters as they were."""
    model = _shared_tiny()
    before = snapshot(model)
    images = tiny_images(batch, seed=layer)
    names = [f"visual.blocks.{layer}.{p}" for p in points]

    def inplace(act, hook):
        act.mul_(scale)

    def replace(act, hook):
        return act * scale

    with torch.no_grad():
        a = model.run_with_hooks(images, fwd_hooks=[(n, inplace) for n in names])
        b = model.run_with_hooks(images, fwd_hooks=[(n, replace) for n in names])
    torch.testing.assert_close(a, b)
    assert_unchanged(model, before)


_TINY: list[HookedCLIP] = []


def _shared_tiny() -> HookedCLIP:
    if not _TINY:
        _TINY.append(HookedCLIP.from_open_clip(tiny_open_clip(seed=4)))
    return _TINY[0]


# ------------------------------------------------------------------ hook functions
def test_hook_called_with_keyword_only_hook(tiny):
    """TL calls ``fn(x, hook=hp)``: a hook whose ``hook`` is keyword-only works."""
    names = []

    def record(act, *, hook):
        names.append(hook.name)

    tiny.run_with_hooks(tiny_images(1), fwd_hooks=[("visual.blocks.1.hook_resid_post", record)])
    assert names == ["visual.blocks.1.hook_resid_post"]


def test_backward_hook_may_return_a_one_tuple(tiny):
    """TL backward hooks may return ``(grad,)``."""
    images = tiny_images(2).requires_grad_(True)
    name = "visual.blocks.0.hook_resid_post"
    out = tiny.run_with_hooks(images, bwd_hooks=[(name, lambda g, hook: (g * 0,))], reset_hooks_end=False)
    out.sum().backward()
    tiny.reset_hooks()
    assert torch.count_nonzero(images.grad) == 0


def test_add_hook_prepend_and_permanent(tiny):
    """TL's ``add_hook(prepend=True)`` runs first; ``add_perma_hook`` survives ``reset_hooks``
    unless ``including_permanent=True``; ``HookPoint.has_hooks``."""
    order = []
    name = "visual.blocks.0.hook_resid_pre"
    tiny.add_hook(name, lambda x, hook: order.append("first"))
    tiny.add_hook(name, lambda x, hook: order.append("prepended"), prepend=True)
    tiny.add_perma_hook(name, lambda x, hook: order.append("permanent"))
    tiny(tiny_images(1))
    assert order == ["prepended", "first", "permanent"]
    tiny.reset_hooks()
    hp = tiny.hook_dict[name]
    assert hp.has_hooks() and not hp.has_hooks(including_permanent=False)
    order.clear()
    tiny(tiny_images(1))
    assert order == ["permanent"]
    tiny.reset_hooks(including_permanent=True)
    assert not hp.has_hooks()


def test_hookpoint_add_and_remove_hooks(tiny):
    """TL's ``HookPoint.add_hook(fn, dir=)`` / ``remove_hooks(dir)``."""
    hp = tiny.hook_dict["visual.hook_embed"]
    hp.add_hook(lambda x, hook: None)
    hp.add_hook(lambda g, hook: None, dir="bwd")
    hp.remove_hooks("fwd")
    assert not hp.fwd_fns and hp.bwd_fns
    hp.remove_hooks("both")
    assert not hp.has_hooks()
    with pytest.raises(ValueError, match="dir"):
        hp.add_hook(lambda x, hook: None, dir="sideways")


def test_run_with_hooks_reset_hooks_end_false_keeps_hooks(tiny):
    """TL: ``run_with_hooks(..., reset_hooks_end=False)`` leaves the hooks for a later backward."""
    name = "visual.blocks.0.hook_resid_pre"
    tiny.run_with_hooks(tiny_images(1), fwd_hooks=[(name, lambda x, hook: None)], reset_hooks_end=False)
    assert tiny.hook_dict[name].has_hooks()
    tiny.reset_hooks()
    assert not tiny.hook_dict[name].has_hooks()


@pytest.mark.parametrize("clear_contexts", [False, True])
def test_run_with_cache_always_removes_its_hooks(tiny, clear_contexts):
    """Unlike TL, ``run_with_cache(reset_hooks_end=False)`` leaves no hook behind: the cache is a
    context, and the two options are accepted for compatibility only (docs/hooks.md)."""
    _, cache = tiny.run_with_cache(tiny_images(1), reset_hooks_end=False, clear_contexts=clear_contexts)
    assert "visual.hook_out" in cache
    assert not [name for name, hp in tiny.hook_dict.items() if hp.has_hooks()]


def test_get_and_add_caching_hooks(tiny):
    """TL's ``get_caching_hooks`` (used with ``hooks``) and ``add_caching_hooks`` fill a dict."""
    images = tiny_images(2)
    cache, fwd, bwd = tiny.get_caching_hooks(lambda n: n.endswith("hook_z"))
    assert bwd == []
    with tiny.hooks(fwd_hooks=fwd):
        tiny(images)
    assert sorted(cache) == ["visual.blocks.0.attn.hook_z", "visual.blocks.1.attn.hook_z"]
    store = tiny.add_caching_hooks("visual.hook_out")
    out = tiny(images)
    tiny.reset_hooks()
    torch.testing.assert_close(store["visual.hook_out"], out)


# ------------------------------------------------------------------ run_with_cache
@settings(max_examples=10, deadline=None)
@given(
    pos=st.one_of(
        st.integers(0, 16),
        st.integers(-17, -1),
        st.tuples(st.integers(0, 8), st.integers(9, 17)).map(lambda t: slice(*t)),
        st.lists(st.integers(0, 16), min_size=1, max_size=4),
    )
)
def test_run_with_cache_pos_slice(pos):
    """TL's ``pos_slice``: the token axis of every cached activation is sliced (query axis of
    patterns), an int drops it; tensors without a token axis are kept whole."""
    model = _shared_tiny()
    images = tiny_images(2)
    _, full = model.run_with_cache(images)
    _, sliced = model.run_with_cache(images, pos_slice=pos)
    index = torch.tensor(pos) if isinstance(pos, list) else pos
    torch.testing.assert_close(sliced["resid_post", 1], full["resid_post", 1][:, index])
    torch.testing.assert_close(sliced["z", 0], full["z", 0][:, index])
    torch.testing.assert_close(sliced["pattern", 0], full["pattern", 0][:, :, index])
    torch.testing.assert_close(sliced["out"], full["out"])


def test_run_with_cache_remove_batch_dim(tiny):
    """TL's ``remove_batch_dim`` drops the batch axis of a batch-1 run (and refuses bigger ones)."""
    _, full = tiny.run_with_cache(tiny_images(1))
    _, cache = tiny.run_with_cache(tiny_images(1), remove_batch_dim=True)
    torch.testing.assert_close(cache["resid_pre", 1], full["resid_pre", 1][0])
    assert not cache.has_batch_dim
    with pytest.raises(ValueError, match="batch of 1"):
        tiny.run_with_cache(tiny_images(2), remove_batch_dim=True)


def test_run_with_cache_incl_bwd_from_a_zero_shot_logit(toy, toy_images):
    """TL's ``incl_bwd``: gradients of a scalar (here one zero-shot logit) land in the cache and
    equal autograd's."""
    direction = toy.encode_text(toy.tokenize(["a red circle"]), normalize=True)[0].detach()

    def logit(emb):
        return (emb @ direction).sum()

    names = ["visual.blocks.2.hook_resid_post"]
    _, cache = toy.run_with_cache(toy_images, names_filter=names, incl_bwd=True, loss_fn=logit)
    resid = {}

    def keep(x, hook):
        x.retain_grad()
        resid["x"] = x

    logit(toy.run_with_hooks(toy_images, fwd_hooks=[(names[0], keep)])).backward()
    torch.testing.assert_close(cache["resid_post_grad", 2], resid["x"].grad)
    with pytest.raises(ValueError, match="loss_fn"):
        toy.run_with_cache(toy_images, names_filter=names, incl_bwd=True)
    toy.zero_grad(set_to_none=True)


def test_run_with_cache_return_cache_object_false(tiny):
    """TL's ``return_cache_object=False`` returns a plain dict."""
    _, cache = tiny.run_with_cache(tiny_images(1), names_filter="visual.hook_out", return_cache_object=False)
    assert type(cache) is dict and list(cache) == ["visual.hook_out"]


# ------------------------------------------------------------------ ActivationCache
def test_cache_key_with_none_third_element(toy, toy_images):
    """TL's ``cache["k", -1, None]``: the third element None means the default."""
    _, cache = toy.run_with_cache(toy_images)
    torch.testing.assert_close(cache["k", -1, None], cache["visual.blocks.3.attn.hook_k"])


def test_cache_layer_out_of_range_says_so(toy, toy_images):
    _, cache = toy.run_with_cache(toy_images, names_filter=lambda n: "pattern" in n)
    with pytest.raises(IndexError, match="out of range.*4 layers"):
        cache["pattern", 10]


def test_cache_to_moves_in_place_and_returns_itself(tiny):
    """TL's ``cache.to(device)`` moves the cache itself; the old tensors are released."""
    _, cache = tiny.run_with_cache(tiny_images(1), names_filter="visual.hook_out")
    old = cache["out"]
    moved = cache.to("cpu")
    assert moved is cache
    cache.to(torch.float64 if False else "cpu")
    assert cache["out"].device.type == "cpu" and torch.equal(cache["out"], old)
    if torch.cuda.is_available():  # pragma: no cover - exercised on the GPU machine
        cache.to("cuda")
        assert cache["out"].is_cuda
        cache.to("cpu")
        assert not cache["out"].is_cuda


def test_random_vit_b_32_hooks_behave_as_on_tl():
    """The same habits on a real-size architecture (ViT-B-32, random weights): in-place ablation
    of a head's values under autograd, and parameters untouched by an in-place pos-embed edit."""
    model = HookedCLIP.from_open_clip("ViT-B-32")
    before = snapshot(model)
    images = torch.randn(1, 3, 224, 224, requires_grad=True)

    def ablate(act, hook):
        act[:, :, 5] = 0
        return act

    out = model.run_with_hooks(
        images, fwd_hooks=[("visual.blocks.6.attn.hook_v", ablate), ("visual.hook_pos_embed", zero_inplace)]
    )
    out.sum().backward()
    assert torch.isfinite(images.grad).all()
    assert_unchanged(model, before)


# ------------------------------------------------------------------ partial forwards
@settings(max_examples=10, deadline=None)
@given(layer=st.integers(-4, 4), batch=st.integers(1, 3))
def test_stop_then_start_at_layer_is_the_forward(layer, batch):
    """TL's ``stop_at_layer`` returns the residual stream entering block ``l`` (== the cached
    ``resid_pre``) and ``start_at_layer`` runs the rest: together they are the whole forward."""
    model = _toy()
    images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        resid = model.encode_image(images, stop_at_layer=layer)
        if layer % 4 != 0 or layer == 0:
            _, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith("hook_resid_pre"))
            torch.testing.assert_close(resid, cache["resid_pre", layer % 4])
        torch.testing.assert_close(model.encode_image(resid, start_at_layer=layer), model.encode_image(images))


def test_start_at_layer_patching_idiom(toy, toy_images):
    """Patching: run the clean residual stream of image A from layer 2 with block 2's hooks
    seeing it, equal to a hook that patches resid_pre 2 to A's value."""
    a, b = toy_images[:1], toy_images[1:]
    with torch.no_grad():
        resid_a = toy(a, stop_at_layer=2)
        patched = toy.run_with_hooks(b, fwd_hooks=[("visual.blocks.2.hook_resid_pre", lambda x, hook: resid_a)])
        torch.testing.assert_close(toy(resid_a, start_at_layer=2), patched)


def test_partial_forward_bad_input(toy, toy_images):
    with pytest.raises(ValueError, match="out of range"):
        toy(toy_images, stop_at_layer=9)
    with pytest.raises(ValueError, match=r"residual stream entering that block, \[batch, 17, 128\]"):
        toy(toy_images, start_at_layer=1)
    with pytest.raises(ValueError, match="image tower"):
        toy(tokens=toy.tokenize(["a"]), stop_at_layer=1)


# ------------------------------------------------------------------ input hooks
def test_input_hooks_cost_nothing_unless_used(toy, toy_images, monkeypatch):
    """TL's hook_attn_in / hook_q_input / hook_k_input / hook_v_input / hook_mlp_in exist;
    unhooked (and in a cache of every hook point) attention keeps its fused per-model path."""
    names = set(toy.hook_points())
    for point in ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in"):
        assert f"visual.blocks.0.{point}" in names
    calls = []
    from hookedclip.model.layers import Attention

    original = Attention.forward_split
    monkeypatch.setattr(Attention, "forward_split", lambda self, *a: calls.append(1) or original(self, *a))
    with torch.no_grad():
        toy(toy_images)
        _, cache = toy.run_with_cache(toy_images)
    assert not calls
    assert "visual.blocks.0.hook_q_input" not in cache and "visual.blocks.0.hook_mlp_in" in cache
    with torch.no_grad():
        toy.run_with_hooks(toy_images, fwd_hooks=[("visual.blocks.1.hook_v_input", lambda x, hook: None)])
    assert len(calls) == 1


@pytest.mark.parametrize("point", ["hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in"])
def test_input_hooks_are_identity_when_unedited(toy, toy_images, point):
    with torch.no_grad():
        out = toy.run_with_hooks(toy_images, fwd_hooks=[(f"visual.blocks.2.{point}", lambda x, hook: None)])
        torch.testing.assert_close(out, toy(toy_images), rtol=1e-5, atol=1e-6)


def test_path_patching_through_v_input(toy, toy_images):
    """Path patching: head 1 of layer 2 reads its values from image A's residual stream while
    everything else reads image B's. Its queries and keys (so the pattern) stay B's, the other
    heads' z stay B's, and its own z is B's pattern applied to A's values."""
    a, b, layer, head = toy_images[:1], toy_images[1:], 2, 1
    names = lambda n: n.startswith(f"visual.blocks.{layer}.")  # noqa: E731
    with torch.no_grad():
        _, clean_a = toy.run_with_cache(a, names_filter=names)
        _, clean_b = toy.run_with_cache(b, names_filter=names)

        def patch(x, hook):
            x[:, :, head] = clean_a["resid_pre", layer]
            return x

        with toy.cache(names_filter=lambda n: n.endswith(("attn.hook_z", "attn.hook_pattern"))) as patched:
            toy.run_with_hooks(b, fwd_hooks=[(f"visual.blocks.{layer}.hook_v_input", patch)])
    torch.testing.assert_close(patched["pattern", layer], clean_b["pattern", layer])
    others = [h for h in range(toy.cfg.vision.heads) if h != head]
    torch.testing.assert_close(patched["z", layer][:, :, others], clean_b["z", layer][:, :, others])
    expected = torch.einsum("bqk,bke->bqe", clean_b["pattern", layer][:, head], clean_a["v", layer][:, :, head])
    torch.testing.assert_close(patched["z", layer][:, :, head], expected, rtol=1e-5, atol=1e-6)


def test_mlp_in_patch_changes_only_the_mlp_input(toy, toy_images):
    a, b = toy_images[:1], toy_images[1:]
    with torch.no_grad():
        _, cache_a = toy.run_with_cache(a, names_filter=lambda n: n.startswith("visual.blocks.1."))
        _, cache_b = toy.run_with_cache(b, names_filter=lambda n: n.startswith("visual.blocks.1."))
        with toy.cache(names_filter=lambda n: n.startswith("visual.blocks.1.")) as patched:
            toy.run_with_hooks(b, fwd_hooks=[("visual.blocks.1.hook_mlp_in", lambda x, hook: cache_a["resid_mid", 1])])
    torch.testing.assert_close(patched["mlp_out", 1], cache_a["mlp_out", 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(patched["resid_mid", 1], cache_b["resid_mid", 1])
    torch.testing.assert_close(
        patched["resid_post", 1], cache_b["resid_mid", 1] + cache_a["mlp_out", 1], rtol=1e-5, atol=1e-6
    )


_TOY: list[HookedCLIP] = []


def _toy() -> HookedCLIP:
    if not _TOY:
        _TOY.append(HookedCLIP.from_pretrained("toy"))
    return _TOY[0]


# ------------------------------------------------------------------ model-level weights
def test_stacked_weights_match_the_blocks_and_are_copies(toy):
    """TL's ``model.W_Q`` etc.: ``[n_layers, ...]`` stacks of the blocks' weights; editing the
    stack leaves the model alone."""
    assert toy.W_Q.shape == (toy.cfg.n_layers, toy.cfg.n_heads, toy.cfg.d_model, toy.cfg.d_head)
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
        torch.testing.assert_close(getattr(toy, name)[2], getattr(toy.visual.blocks[2].attn, name))
    for name in ("W_in", "W_out", "b_in", "b_out"):
        torch.testing.assert_close(getattr(toy, name)[1], getattr(toy.visual.blocks[1].mlp, name))
    torch.testing.assert_close(toy.text.W_O[0], toy.text.blocks[0].attn.W_O)
    stacked = toy.W_O
    stacked.zero_()
    assert toy.visual.blocks[0].attn.W_O.abs().sum() > 0
    assert toy.cfg.d_mlp == toy.cfg.vision.d_mlp


@settings(max_examples=8, deadline=None)
@given(layer=st.integers(0, 3), head=st.integers(0, 3))
def test_factored_ov_qk_svd_without_the_full_matrix(layer, head):
    """TL's ``model.OV`` / ``model.QK`` are factored: their SVD (from the d_head-sized factors)
    equals the SVD of the full product, and the rank is at most d_head."""
    model = _toy()
    for circuit, full in (
        (model.OV[layer, head], model.W_V[layer, head] @ model.W_O[layer, head]),
        (model.QK[layer, head], model.W_Q[layer, head] @ model.W_K[layer, head].T),
    ):
        U, S, Vh = circuit.svd()
        assert S.shape == (model.cfg.d_head,)
        torch.testing.assert_close(S, torch.linalg.svdvals(full)[: model.cfg.d_head], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(U @ torch.diag(S) @ Vh, full, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(circuit.norm(), full.norm(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(circuit.AB, full)


def test_head_labels_and_accumulated_bias(toy):
    """TL's ``all_head_labels`` and ``accumulated_bias`` (the biases written before a block)."""
    labels = toy.all_head_labels()
    assert labels[:2] == ["L0H0", "L0H1"] and len(labels) == toy.cfg.n_layers * toy.cfg.n_heads
    expected = toy.b_O[:2].sum(0) + toy.b_out[:2].sum(0)
    torch.testing.assert_close(toy.accumulated_bias(2), expected)
    torch.testing.assert_close(toy.accumulated_bias(2, mlp_input=True), expected + toy.b_O[2])
    torch.testing.assert_close(toy.accumulated_bias(2, include_mlp_biases=False), toy.b_O[:2].sum(0))
    torch.testing.assert_close(toy.accumulated_bias(0), torch.zeros(toy.cfg.d_model))


def test_from_open_clip_processing_flags_keep_the_function(tmp_path):
    """TL's ``from_pretrained(fold_ln=, center_writing_weights=, fold_value_biases=)``: the
    embeddings are unchanged and a folded LayerNorm says so (also after save/load)."""
    source = tiny_open_clip(seed=5)
    plain = HookedCLIP.from_open_clip(source)
    folded = HookedCLIP.from_open_clip(source, fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    images = tiny_images(2)
    torch.testing.assert_close(folded.encode_image(images), plain.encode_image(images), rtol=1e-4, atol=1e-5)
    ln = folded.visual.blocks[0].ln1
    assert ln.folded and "folded" in repr(ln) and not plain.visual.blocks[0].ln1.folded
    assert torch.equal(folded.b_V, torch.zeros_like(folded.b_V))
    folded.save(tmp_path / "m")
    assert HookedCLIP.load(tmp_path / "m").visual.ln_final.folded


def test_ln_final_is_an_alias_of_ln_post(toy, toy_images):
    """TL calls the last LayerNorm ``ln_final``; open_clip's ``ln_post`` keeps its name."""
    assert toy.visual.ln_final is toy.visual.ln_post
    _, cache = toy.run_with_cache(toy_images, names_filter="visual.ln_post.hook_scale")
    torch.testing.assert_close(cache["ln_final_scale"], cache["visual.ln_post.hook_scale"])


# ------------------------------------------------------------------ ActivationCache analyses
def _unbiased_copy(model: HookedCLIP) -> HookedCLIP:
    """The model with every b_O and ln_post's β set to zero: then a component's direct
    contribution has no share of biases, and the TL-style readout and decompose_image (each
    component centred on its own mean) must give the same rows."""
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for block in clone.visual.blocks:
            block.attn.b_O.zero_()
        clone.visual.ln_post.b.zero_()
    return clone


@pytest.mark.parametrize("kind", ["toy", "avg_pool", "ln_after_pool"])
def test_logit_attrs_agree_with_decompose(kind):
    """TL's ``stack_head_results`` / ``decompose_resid`` + ``logit_attrs``, with CLIP's readout,
    equal :func:`decompose_image`'s rows dotted with the same direction, to 1e-5 (class token,
    average pooling, and ln_post after pooling)."""
    from hookedclip.decompose import decompose_image

    if kind == "toy":
        model, images = _unbiased_copy(_toy()), torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    else:
        extra = {"pool_type": "avg"} if kind == "avg_pool" else {"pool_type": "avg", "final_ln_after_pool": True}
        model = _unbiased_copy(HookedCLIP.from_open_clip(tiny_open_clip(seed=6, **extra)))
        images = tiny_images(3)
    model = model.double()
    images = images.double()
    direction = torch.randn(model.cfg.vision.output_dim, generator=torch.Generator().manual_seed(2)).double()
    _, cache = model.run_with_cache(images)
    heads, labels = cache.stack_head_results(return_labels=True)
    parts, part_labels = cache.decompose_resid(return_labels=True)
    stack = decompose_image(model, images, ln_mode="center_each", normalize=False)
    rows = dict(zip(stack.labels, (stack.tensor @ direction)))
    ours = cache.logit_attrs(heads, direction)
    torch.testing.assert_close(ours, torch.stack([rows[label] for label in labels]), rtol=1e-5, atol=1e-8)
    mlps = cache.logit_attrs(parts, direction)
    for label, value in zip(part_labels, mlps):
        name = "embed" if label == "embed" else f"mlp{label.split('_')[0]}" if "mlp" in label else None
        if name is not None:
            torch.testing.assert_close(value, rows[name], rtol=1e-5, atol=1e-8)
    # every row plus the frozen β equals the score of the embedding
    emb = model.encode_image(images)
    beta = model.visual.ln_post.b @ model.visual.W_proj @ direction
    torch.testing.assert_close(mlps.sum(0) + beta, emb @ direction, rtol=1e-5, atol=1e-8)


def test_residual_stacks_sum_to_the_stream(toy, toy_images):
    """TL's identities: decompose_resid and get_full_resid_decomposition sum to the residual
    stream entering the layer; accumulated_resid's rows are the cached streams."""
    _, cache = toy.run_with_cache(toy_images)
    for layer in (1, 3, None):
        target = cache["resid_post", 3] if layer is None else cache["resid_pre", layer]
        torch.testing.assert_close(cache.decompose_resid(layer).sum(0), target, rtol=1e-5, atol=1e-5)
        full, labels = cache.get_full_resid_decomposition(layer, return_labels=True)
        torch.testing.assert_close(full.sum(0), target, rtol=1e-4, atol=1e-4)
        assert labels[-2:] == ["embed", "bias"]
        coarse = cache.get_full_resid_decomposition(layer, expand_neurons=False)
        torch.testing.assert_close(coarse.sum(0), target, rtol=1e-4, atol=1e-4)
    mid = cache.decompose_resid(2, mlp_input=True).sum(0)
    torch.testing.assert_close(mid, cache["resid_mid", 2], rtol=1e-5, atol=1e-5)
    acc, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels[:3] == ["0_pre", "0_mid", "1_pre"] and labels[-1] == "final_post"
    torch.testing.assert_close(acc[-1], cache["resid_post", 3])
    assert cache.accumulated_resid(2, return_labels=True)[1] == ["0_pre", "1_pre", "2_pre"]


@settings(max_examples=8, deadline=None)
@given(layer=st.integers(0, 3), pos=st.one_of(st.none(), st.integers(0, 16)), mlp_input=st.booleans())
def test_apply_ln_to_stack_matches_the_layer_norm(layer, pos, mlp_input):
    """TL's ``apply_ln_to_stack``: the accumulated stream through it equals the LayerNorm's
    output before its affine part, at any layer and position."""
    model = _toy()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(layer))
    _, cache = model.run_with_cache(images)
    resid = cache["resid_mid" if mlp_input else "resid_pre", layer]
    normed = cache.apply_ln_to_stack(
        resid[None] if pos is None else resid[None, :, pos], layer, mlp_input=mlp_input, pos_slice=pos
    )[0]
    ln = model.visual.blocks[layer].ln2 if mlp_input else model.visual.blocks[layer].ln1
    expected = (cache["ln2" if mlp_input else "ln1", layer] - ln.b) / ln.w
    expected = expected if pos is None else expected[:, pos]
    torch.testing.assert_close(normed, expected, rtol=1e-4, atol=1e-4)


def test_neuron_results_sum_to_the_mlp_output(toy, toy_images):
    """TL's ``get_neuron_results`` / ``stack_neuron_results``: neurons sum to ``mlp_out - b_out``."""
    _, cache = toy.run_with_cache(toy_images)
    neurons = cache.get_neuron_results(1)
    torch.testing.assert_close(
        neurons.sum(-2), cache["mlp_out", 1] - toy.visual.blocks[1].mlp.b_out, rtol=1e-4, atol=1e-5
    )
    some, labels = cache.stack_neuron_results(2, neuron_slice=[3, 7], pos_slice=0, return_labels=True)
    assert labels == ["L0N3", "L0N7", "L1N3", "L1N7"] and some.shape == (4, 2, toy.cfg.d_model)
    torch.testing.assert_close(some[1], cache.get_neuron_results(0, 7, 0))


def test_head_results_from_z_equal_cached_results_and_compute_head_results(tiny):
    images = tiny_images(2)
    _, full = tiny.run_with_cache(images)
    _, z_only = tiny.run_with_cache(images, names_filter=lambda n: n.endswith("hook_z"))
    torch.testing.assert_close(z_only.stack_head_results(pos_slice=0), full.stack_head_results(pos_slice=0))
    z_only.compute_head_results()
    torch.testing.assert_close(z_only["result", 1], full["result", 1])
    with_rest, labels = full.stack_head_results(1, return_labels=True, incl_remainder=True)
    assert labels[-1] == "remainder"
    torch.testing.assert_close(with_rest.sum(0), full["resid_pre", 1], rtol=1e-5, atol=1e-5)
    with pytest.warns(DeprecationWarning, match="pos_slice"):
        old, old_labels = full.stack_head_results(pos=0)
    torch.testing.assert_close(old, full.stack_head_results(pos_slice=0))


#: TransformerLens's residual-stack signatures as they were spelled out before the options were
#: declared once (every flag, its old default), to check that the shared table kept each default.
_OLD_READOUT = {"apply_ln": False, "pos_slice": None, "return_labels": False, "tower": "visual"}
_OLD_RESID_DEFAULTS = {
    "stack_head_results": {**_OLD_READOUT, "incl_remainder": False},
    "stack_neuron_results": {**_OLD_READOUT, "incl_remainder": False, "neuron_slice": None},
    "accumulated_resid": {**_OLD_READOUT, "incl_mid": False, "mlp_input": False},
    "decompose_resid": {**_OLD_READOUT, "mlp_input": False, "mode": "all", "incl_embeds": True},
    "get_full_resid_decomposition": {**_OLD_READOUT, "mlp_input": False, "expand_neurons": True},
}


@pytest.mark.parametrize("name", sorted(_OLD_RESID_DEFAULTS))
def test_residual_stack_options_keep_their_defaults(toy, toy_images, name):
    """The options left out take TL's defaults: no options equals every old default spelled
    out (and each old default is the one the shared table holds)."""
    from hookedclip.decompose import residual

    _, cache = toy.run_with_cache(toy_images)
    old = _OLD_RESID_DEFAULTS[name]
    assert {option: residual.RESID_DEFAULTS[option] for option in old} == old
    plain, spelled = getattr(cache, name)(2), getattr(cache, name)(2, **old)
    torch.testing.assert_close(plain, spelled, rtol=0, atol=0)
    labelled = getattr(residual, name)(cache, 2, **{**old, "return_labels": True})
    torch.testing.assert_close(labelled[0], plain, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(_OLD_RESID_DEFAULTS))
def test_residual_stack_options_are_keyword_only_and_checked(toy, toy_images, name):
    """TL users pass the flags by keyword; a positional flag or a misspelt option is a
    TypeError naming the function (and, for a misspelt one, the names it accepts)."""
    from hookedclip.decompose import residual

    _, cache = toy.run_with_cache(toy_images)
    with pytest.raises(TypeError, match=rf"{name}\(\) takes from 1 to 2 positional arguments"):
        getattr(cache, name)(2, True)
    with pytest.raises(TypeError, match=rf"{name}\(\) got unexpected option\(s\) \['apply_lm'\]") as error:
        getattr(residual, name)(cache, 2, apply_lm=True)
    assert str(error.value).endswith(f"it accepts {sorted(_OLD_RESID_DEFAULTS[name])}")


def test_tl_shorthand_aliases_and_batch_helpers(toy, toy_images):
    """TL's aliases (``attn``, ``attn_logits``, ``key``/``query``/``value``, ``scale`` /
    ``normalized`` with an ``"ln2"`` sublayer), ``stack_activation``, ``remove_batch_dim``,
    ``apply_slice_to_batch_dim`` and ``toggle_autodiff``."""
    _, cache = toy.run_with_cache(toy_images)
    pairs = [
        (("attn", 1), ("pattern", 1)),
        (("attn_logits", 1), ("attn_scores", 1)),
        (("key", 2), ("k", 2)),
        (("query", 0), ("q", 0)),
        (("value", 3), ("v", 3)),
        (("scale", 1), ("ln1_scale", 1)),
        (("scale", 1, "ln2"), ("ln2_scale", 1)),
        (("normalized", 2, "ln2"), ("ln2", 2)),
    ]
    for alias, name in pairs:
        torch.testing.assert_close(cache[alias], cache[name])
    assert cache.stack_activation("resid_pre", 2).shape == (2, 2, 17, 128)
    first = cache.apply_slice_to_batch_dim(0)
    torch.testing.assert_close(first["z", 1], cache["z", 1][:1])
    first.remove_batch_dim()
    torch.testing.assert_close(first["z", 1], cache["z", 1][0])
    with pytest.raises(ValueError, match="batch of 1"):
        cache.remove_batch_dim()
    try:
        cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled()
    finally:
        cache.toggle_autodiff(True)
    assert torch.is_grad_enabled()


def test_transformerlens_habits_example(tmp_path):
    """The example's logit lens ends at the model's own accuracy, full patching of the last
    stream recovers the whole gap, and the figure is written."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "transformerlens_habits.py"
    spec = importlib.util.spec_from_file_location("transformerlens_habits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--n", "120", "--out", str(tmp_path)])
    lens = out["lens"]
    assert lens["final_post"][0] > lens["0_pre"][0] + 0.3  # the shape is read out at the end, not at the start
    low, high = lens["final_post"][1]
    assert low <= lens["final_post"][0] <= high
    assert out["recovered"][-1] == pytest.approx(1.0, abs=1e-4)  # the last stream's class token is the readout
    assert out["recovered"][0] == pytest.approx(0.0, abs=1e-4)  # the class token's input is the same everywhere
    assert (tmp_path / "logit_lens_dla.png").stat().st_size > 10_000
