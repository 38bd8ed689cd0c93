"""The hook API: contexts, ordering, removal, caching, gradients, lazy per-head results."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import rel_err

# TorchDispatchMode sees every aten op, so the laziness test does not depend on how the
# per-head result would be computed.
from torch.utils._python_dispatch import TorchDispatchMode

from hookedclip.hooks import HookPoint


def n_active(model) -> int:
    return sum(len(h.fwd_fns) + len(h.bwd_fns) for h in model.hook_dict.values())


def test_every_design_hook_point_exists(tiny_model):
    names = set(tiny_model.hook_points())
    for tower in ("visual", "text"):
        for suffix in ("hook_embed", "hook_pos_embed", "hook_pooled", "hook_out"):
            assert f"{tower}.{suffix}" in names
        for hook in (
            "hook_resid_pre",
            "hook_attn_out",
            "hook_resid_mid",
            "hook_mlp_out",
            "hook_resid_post",
            "ln1.hook_scale",
            "ln1.hook_normalized",
            "ln2.hook_scale",
            "ln2.hook_normalized",
            "mlp.hook_pre",
            "mlp.hook_post",
            *(f"attn.hook_{x}" for x in ("q", "k", "v", "attn_scores", "pattern", "z", "result")),
        ):
            assert f"{tower}.blocks.1.{hook}" in names
    assert {"visual.ln_pre.hook_scale", "visual.ln_post.hook_normalized", "text.ln_final.hook_scale"} <= names


def test_hooks_removed_on_exit_and_on_exception(tiny_model, images):
    with tiny_model.hooks(fwd_hooks=[("visual.blocks.0.hook_resid_pre", lambda x, hook: x * 0)]):
        assert n_active(tiny_model) == 1
    assert n_active(tiny_model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_model.hooks(fwd_hooks=[(lambda n: "hook_z" in n, lambda x, hook: None)]):
            assert n_active(tiny_model) == sum("hook_z" in n for n in tiny_model.hook_points()) == 4
            raise RuntimeError("boom")
    assert n_active(tiny_model) == 0


def test_contexts_nest_inner_after_outer(tiny_model, images):
    order = []
    name = "visual.blocks.1.hook_resid_mid"
    with tiny_model.hooks(fwd_hooks=[(name, lambda x, hook: order.append("outer"))]):
        with tiny_model.hooks(fwd_hooks=[(name, lambda x, hook: order.append("inner"))]):
            tiny_model(images)
        tiny_model(images)
    assert order == ["outer", "inner", "outer"]


def test_replacement_changes_output_and_shape_is_checked(tiny_model, images):
    clean = tiny_model(images)
    zeroed = tiny_model.run_with_hooks(images, fwd_hooks=[("visual.hook_pooled", lambda x, hook: torch.zeros_like(x))])
    torch.testing.assert_close(zeroed, tiny_model.visual.b_proj.expand_as(zeroed))
    assert not torch.allclose(clean, zeroed)
    with pytest.raises(ValueError, match="shape"):
        tiny_model.run_with_hooks(images, fwd_hooks=[("visual.hook_pooled", lambda x, hook: x[:1])])


def test_unknown_hook_name_suggests_closest(tiny_model):
    with pytest.raises(KeyError, match=r"visual\.blocks\.1\.attn\.hook_z"):
        with tiny_model.hooks(fwd_hooks=[("visual.blocks.1.attn.hook_zz", lambda x, hook: None)]):
            pass
    with pytest.raises(KeyError, match="unknown hook point"):
        tiny_model.run_with_cache(torch.zeros(1, 3, 16, 16), names_filter=["nope"])


def test_cache_shorthand_and_shapes(tiny_model, images):
    out, cache = tiny_model.run_with_cache(images)
    cfg = tiny_model.cfg.vision
    b, p, h, dh, d = images.shape[0], cfg.n_tokens, cfg.heads, cfg.d_head, cfg.width
    assert cache["z", 1].shape == (b, p, h, dh)
    assert cache["pattern", -1].shape == (b, h, p, p)
    assert cache["result", 0].shape == (b, p, h, d)
    assert cache["resid_post", -1] is cache["visual.blocks.1.hook_resid_post"]
    assert cache["ln1_scale", 0].shape == (b, p, 1)
    torch.testing.assert_close(cache["out"], out)
    assert cache.stack("resid_post").shape == (cfg.layers, b, p, d)
    with pytest.raises(KeyError, match="not in the cache"):
        cache["resid_post", 0, "text"]


def test_cache_names_filter_device_dtype(tiny_model, images):
    with tiny_model.cache(names_filter=lambda n: n.endswith("hook_z"), dtype=torch.float64) as cache:
        tiny_model(images)
    assert set(cache) == {f"visual.blocks.{i}.attn.hook_z" for i in range(2)}
    assert cache["z", 0].dtype == torch.float64


def test_pattern_hook_takes_explicit_path_with_same_result(tiny_model, images):
    """SDPA (no pattern hook) and the explicit softmax path compute the same function."""
    fused = tiny_model(images)
    seen = {}
    explicit = tiny_model.run_with_hooks(
        images, fwd_hooks=[(lambda n: "hook_pattern" in n, lambda x, hook: seen.setdefault(hook.name, x))]
    )
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-6)
    pattern = seen["visual.blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
    tokens = torch.tensor([[5, 7, 9, 99, 0, 0]])
    with tiny_model.cache(names_filter=lambda n: n.startswith("text") and "pattern" in n) as cache:
        tiny_model(tokens=tokens)
    text_pattern = cache["pattern", 0, "text"][0, 0]
    assert torch.all(text_pattern.triu(1) == 0), "text attention must be causal"


class _ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor any aten op produces (whatever Python code called it)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [
            tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else (out,)) if torch.is_tensor(t)
        ]
        return out


def _per_head_results_made(model, images, **forward_kw) -> int:
    """How many ``[batch, pos, head, d_model]`` tensors (per-head results) a forward creates."""
    cfg = model.cfg.vision
    per_head = (images.shape[0], cfg.n_tokens, cfg.heads, cfg.width)
    with torch.no_grad(), _ShapeRecorder() as recorder:
        model(images, **forward_kw)
    return recorder.shapes.count(per_head)


def test_result_is_lazy(tiny_model, images):
    """The per-head result is materialised only while hook_result is hooked or cached."""
    assert _per_head_results_made(tiny_model, images) == 0
    z_seen = []
    with tiny_model.hooks(fwd_hooks=[(lambda n: n.endswith("hook_z"), lambda x, hook: z_seen.append(hook.name))]):
        assert _per_head_results_made(tiny_model, images) == 0
    assert len(z_seen) == tiny_model.cfg.vision.layers  # the z hooks ran, yet no per-head result was built
    with tiny_model.cache(names_filter=lambda n: n.endswith("hook_z")):
        assert _per_head_results_made(tiny_model, images) == 0
    # The recorder also counts views (a cache's detach), so "some" rather than an exact number.
    with tiny_model.hooks(fwd_hooks=[("visual.blocks.0.attn.hook_result", lambda x, hook: None)]):
        assert _per_head_results_made(tiny_model, images) > 0
    with tiny_model.cache(names_filter=lambda n: n.endswith("hook_result")) as cache:
        assert _per_head_results_made(tiny_model, images) > 0
    assert len(cache) == tiny_model.cfg.vision.layers


def _count_sdpa_calls(monkeypatch) -> list[int]:
    """Wrap ``F.scaled_dot_product_attention`` (looked up at call time by the layers) with a counter."""
    calls = [0]
    fused = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls[0] += 1
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def _observe(x, hook):
    return None


def _scale_queries(q, hook):
    return q * 1.7


@pytest.mark.parametrize(
    "fwd_hooks, fused_layers",
    [
        ([], 2),
        ([(lambda n: n.endswith(("hook_z", "hook_resid_pre", "hook_resid_post", "hook_result")), _observe)], 2),
        # q/k/v hooks run before the kernel, which then reads the (possibly replaced) tensors.
        ([(lambda n: n.endswith(("hook_q", "hook_k", "hook_v")), _observe)], 2),
        ([("visual.blocks.0.attn.hook_pattern", _observe)], 1),
        ([("visual.blocks.1.attn.hook_attn_scores", _observe)], 1),
        ([(lambda n: n.endswith(("hook_pattern", "hook_attn_scores")), _observe)], 0),
    ],
    ids=["no-hooks", "z-resid-result", "qkv", "pattern-L0", "scores-L1", "all-patterns"],
)
def test_fused_attention_unless_scores_or_pattern_hooked(tiny_model, images, monkeypatch, fwd_hooks, fused_layers):
    with torch.no_grad():
        expected = tiny_model(images)
        calls = _count_sdpa_calls(monkeypatch)
        out = tiny_model.run_with_hooks(images, fwd_hooks=fwd_hooks)
    assert calls[0] == fused_layers
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_query_replacement_acts_the_same_on_both_attention_paths(tiny_model, images, monkeypatch):
    """A q hook's replacement reaches the fused kernel exactly as it reaches the explicit softmax."""
    scale_q = [("visual.blocks.0.attn.hook_q", _scale_queries)]
    with torch.no_grad():
        clean = tiny_model(images)
        calls = _count_sdpa_calls(monkeypatch)
        fused = tiny_model.run_with_hooks(images, fwd_hooks=scale_q)
        assert calls[0] == 2
        explicit = tiny_model.run_with_hooks(
            images, fwd_hooks=scale_q + [("visual.blocks.0.attn.hook_pattern", _observe)]
        )
        assert calls[0] == 3  # block 0 took the explicit path
    assert rel_err(clean, fused) > 1e-3
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-6)


def test_backward_hooks_and_cached_gradients_equal_autograd(tiny_model, images):
    images = images.clone().requires_grad_(True)
    name = "visual.blocks.0.hook_resid_mid"
    with tiny_model.cache(names_filter=[name], incl_bwd=True) as cache:
        loss = tiny_model(images).pow(2).sum()
        loss.backward()
    # Same gradient by autograd on a retained activation.
    kept = {}

    def keep(x, hook):
        x.retain_grad()
        kept["x"] = x

    images.grad = None
    with tiny_model.hooks(fwd_hooks=[(name, keep)]):
        loss = tiny_model(images).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, kept["x"])
    torch.testing.assert_close(cache[name + "_grad"], grad)
    torch.testing.assert_close(cache["resid_mid_grad", 0], grad)


def test_backward_hook_can_replace_gradient(tiny_model, images):
    images = images.clone().requires_grad_(True)
    with tiny_model.hooks(bwd_hooks=[("visual.hook_embed", lambda g, hook: torch.zeros_like(g))]):
        tiny_model(images).sum().backward()
    assert torch.count_nonzero(images.grad) == 0


def test_hook_point_rejects_non_tensor():
    hp = HookPoint()
    hp.name = "x"
    hp.fwd_fns.append(lambda x, hook: 3)
    with pytest.raises(TypeError, match="must return a Tensor or None"):
        hp(torch.zeros(2))


def test_same_function_added_twice_is_removed_once_per_context(tiny_model, images):
    fn = lambda x, hook: None  # noqa: E731
    name = "visual.hook_out"
    with tiny_model.hooks(fwd_hooks=[(name, fn)]):
        with tiny_model.hooks(fwd_hooks=[(name, fn)]):
            assert len(tiny_model.hook_dict[name].fwd_fns) == 2
        assert len(tiny_model.hook_dict[name].fwd_fns) == 1
    assert n_active(tiny_model) == 0


def test_stack_head_results_from_result_or_z(tiny_model, images):
    _, cache = tiny_model.run_with_cache(images)
    stacked, labels = cache.stack_head_results(pos_slice=0, return_labels=True)
    cfg = tiny_model.cfg.vision
    assert stacked.shape == (cfg.layers * cfg.heads, images.shape[0], cfg.width)
    assert labels[:2] == ["L0H0", "L0H1"] and len(labels) == cfg.layers * cfg.heads
    _, z_only = tiny_model.run_with_cache(images, names_filter=lambda n: n.endswith("hook_z"))
    from_z = z_only.stack_head_results(pos_slice=0)
    torch.testing.assert_close(stacked, from_z, rtol=1e-5, atol=1e-6)


def test_packed_qkv_shares_the_weights_and_follows_edits(tiny_model, images):
    """The fused QKV matrix is the weights' own storage (no second copy), and in-place edits,
    reassignments and dtype moves of W_Q / W_K / W_V are seen by the next forward."""
    import copy

    model = copy.deepcopy(tiny_model)
    attn = model.visual.blocks[0].attn
    with torch.no_grad():
        before = model.encode_image(images)
        assert attn.W_Q.untyped_storage().data_ptr() == attn.W_V.untyped_storage().data_ptr()
        attn.W_V.mul_(0.5)  # in place: written into the packed tensor
        halved = model.encode_image(images)
        reference = copy.deepcopy(tiny_model)
        reference.visual.blocks[0].attn.W_V.data = reference.visual.blocks[0].attn.W_V.data.clone() * 0.5
        torch.testing.assert_close(halved, reference.encode_image(images))
        assert not torch.allclose(halved, before)
        attn.W_K.data = torch.zeros_like(attn.W_K)  # a reassignment: re-packed
        zero_k = model.encode_image(images)
        assert not torch.allclose(zero_k, halved)
        model.double()
        torch.testing.assert_close(model.encode_image(images.double()).float(), zero_k, rtol=1e-5, atol=1e-6)
    out = model.encode_image(images.double())  # with autograd the weights get gradients
    out.sum().backward()
    assert attn.W_Q.grad is not None and attn.W_Q.grad.abs().sum() > 0


def test_input_hooks_allocate_nothing_unless_used(tiny_model, images):
    """The per-head inputs (``[batch, pos, head, d_model]``, like per-head results) and the MLP
    input copy are made only while their hooks are active; unhooked, the forward runs the same
    aten ops as with no input hooks at all."""
    cfg = tiny_model.cfg.vision
    per_head = (images.shape[0], cfg.n_tokens, cfg.heads, cfg.width)

    def ops(**hooks) -> list[tuple[int, ...]]:
        with torch.no_grad(), tiny_model.hooks(**hooks), _ShapeRecorder() as recorder:
            tiny_model(images)
        return recorder.shapes

    ops()  # the first forward packs the attention weights
    plain = ops()
    assert plain.count(per_head) == 0
    assert ops(fwd_hooks=[("visual.blocks.1.hook_resid_pre", lambda x, hook: None)]) == plain
    assert ops(fwd_hooks=[("visual.blocks.1.hook_v_input", lambda x, hook: None)]).count(per_head) > 0
    assert len(ops(fwd_hooks=[("visual.blocks.1.hook_mlp_in", lambda x, hook: None)])) > len(plain)
