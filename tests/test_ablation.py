"""Ablation contexts: the identities every ablation satisfies (edits that must change nothing, everything
ablated, the mean kept), equivalence with weight edits, and the component means they put in."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP, ablation
from hookedclip.decompose import decompose_image
from hookedclip.model.weights import fold_ln


def _setup(seed=0, n=4, **kw):
    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=seed, **kw)).double()
    images = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return model, images


EVERY = ["embed", "L0-1", "mlp0", "mlp1"]
SETS = ["embed", "mlp0", "mlp1", "L0H0", "L0H3", "L1H1", "L1H2"]


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).Q


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["total", "direct"]),
    kind=st.sampled_from(["keep_full_basis", "project_nothing", "own_mean"]),
)
def test_ablations_that_must_change_nothing_are_the_identity(seed, mode, kind):
    """Edits that must change nothing leave the embedding alone, on every real component: a
    full orthonormal basis kept, no direction removed, or each component replaced by its exact
    value on a repeated image."""
    model, images = _setup(seed)
    d = model.cfg.vision.output_dim if mode == "direct" else model.cfg.vision.width
    if kind == "own_mean":
        images = images[:1].expand(3, -1, -1, -1).contiguous()
    clean = model.encode_image(images)
    ctx = {
        "keep_full_basis": lambda: ablation.keep_only(model, EVERY, _orthogonal(d, seed).T, mode=mode),
        "project_nothing": lambda: ablation.project_out(
            model, EVERY, torch.zeros(0, d, dtype=torch.float64), mode=mode
        ),
        "own_mean": lambda: ablation.mean_ablate(
            model, EVERY, ablation.component_means(model, [images], mode=mode), mode
        ),
    }[kind]
    with ctx():
        torch.testing.assert_close(model.encode_image(images), clean, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", ["total", "direct"])
def test_own_mean_on_repeated_image_changes_nothing(mode):
    model, images = _setup(1)
    same = images[:1].expand(3, -1, -1, -1).contiguous()
    other = images[1:2].expand(3, -1, -1, -1).contiguous()
    comps = ["L0H1", "L1H2", "mlp0", "embed"]
    means = ablation.component_means(model, [same], comps, mode=mode)
    clean_same, clean_other = model.encode_image(same), model.encode_image(other)
    with ablation.mean_ablate(model, comps, means, mode):
        ablated_same, ablated_other = model.encode_image(same), model.encode_image(other)
    torch.testing.assert_close(ablated_same, clean_same, rtol=1e-10, atol=1e-12)
    # The same means do act on another image: the identity above is not vacuous.
    assert (ablated_other - clean_other).abs().max() > 1e-4


@pytest.mark.parametrize("fold", [False, True])
def test_direct_ablation_of_everything_leaves_the_bias_row(fold):
    """With every row zeroed (direct mode) only the projection bias remains."""
    model, images = _setup(2)
    if fold:
        fold_ln(model)  # moves ln_post's β into the projection bias
    else:
        with torch.no_grad():
            model.visual.b_proj.normal_(generator=torch.Generator().manual_seed(2))
    assert model.visual.b_proj.abs().min() > 0
    with ablation.zero_ablate(model, EVERY, mode="direct"):
        out = model.encode_image(images)
    torch.testing.assert_close(out, model.visual.b_proj.expand_as(out), rtol=0, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 6), some=st.sets(st.sampled_from(SETS), min_size=1))
def test_mean_ablating_everything_gives_a_constant_and_keeps_the_mean(seed, n, some):
    """Mean-ablating every component gives all images one unit embedding; mean-ablating any subset
    keeps the batch mean of the unit embeddings (direct mode, normalised rows)."""
    model, images = _setup(seed, n=n)
    every = EVERY
    means = ablation.component_means(model, [images], mode="direct")
    with ablation.mean_ablate(model, every, means, mode="direct"):
        out = F.normalize(model.encode_image(images), dim=-1)
    torch.testing.assert_close(out, out[:1].expand_as(out), rtol=1e-10, atol=1e-12)
    some = sorted(some)
    with ablation.mean_ablate(model, some, means, mode="direct"):
        out = model.encode_image(images)
    normed = out / model.encode_image(images).norm(dim=-1, keepdim=True)
    clean = F.normalize(model.encode_image(images), dim=-1)
    torch.testing.assert_close(normed.mean(0), clean.mean(0), rtol=1e-10, atol=1e-12)


def test_direct_mean_ablation_matches_decomposition_rows():
    model, images = _setup(4)
    means = ablation.component_means(model, [images[:2]], ["L1H1"], mode="direct")
    stack = decompose_image(model, images)
    expected = stack.sum() - stack.select("L1H1").tensor[0] + means["L1H1"]
    with ablation.mean_ablate(model, ["L1H1"], means, mode="direct"):
        out = model.encode_image(images)
    norm = model.encode_image(images).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out / norm, expected, rtol=1e-10, atol=1e-12)


def test_direct_mode_leaves_downstream_layers_alone_total_mode_does_not():
    model, images = _setup(5)
    _, clean = model.run_with_cache(images, names_filter="visual.blocks.1.hook_resid_pre")
    for mode, changed in (("direct", False), ("total", True)):
        with ablation.zero_ablate(model, ["L0H0"], mode):
            _, cache = model.run_with_cache(images, names_filter="visual.blocks.1.hook_resid_pre")
        diff = (cache["resid_pre", 1] - clean["resid_pre", 1]).abs().max()
        assert (diff > 1e-6) == changed


@pytest.mark.parametrize("head", [0, 2])
def test_total_zero_ablation_equals_weight_edit(head):
    model, images = _setup(6)
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.visual.blocks[1].attn.W_O[head] = 0
    with ablation.zero_ablate(model, [f"L1H{head}"], mode="total"):
        out = model.encode_image(images)
    torch.testing.assert_close(out, edited.encode_image(images), rtol=1e-10, atol=1e-12)


def test_total_resample_and_project_out_act_on_the_real_output():
    model, images = _setup(7)
    source = images.flip(0)
    with ablation.resample_ablate(model, ["L1H0", "L1H1", "L1H2", "L1H3"], source, mode="total"):
        with model.cache(names_filter="visual.blocks.1.hook_attn_out") as c1:
            model.encode_image(images)
    _, c2 = model.run_with_cache(source, names_filter="visual.blocks.1.hook_attn_out")
    torch.testing.assert_close(c1["attn_out", 1], c2["attn_out", 1], rtol=1e-10, atol=1e-12)
    u = torch.randn(1, 32, dtype=torch.float64)
    with ablation.project_out(model, ["mlp0"], u, mode="total"):
        _, cache = model.run_with_cache(images, names_filter="visual.blocks.0.hook_mlp_out")
    assert (cache["mlp_out", 0] @ u.T).abs().max() < 1e-10


def test_keep_only_with_full_basis_is_identity_and_empty_basis_is_mean():
    model, images = _setup(8)
    means = ablation.component_means(model, [images], ["L1H2"], mode="direct")
    clean = model.encode_image(images)
    with ablation.keep_only(model, ["L1H2"], torch.eye(16, dtype=torch.float64), means, mode="direct"):
        torch.testing.assert_close(model.encode_image(images), clean, rtol=1e-10, atol=1e-12)
    with ablation.keep_only(model, ["L1H2"], torch.zeros(0, 16, dtype=torch.float64), means, mode="direct"):
        kept = model.encode_image(images)
    with ablation.mean_ablate(model, ["L1H2"], means, mode="direct"):
        torch.testing.assert_close(kept, model.encode_image(images), rtol=1e-10, atol=1e-12)


def test_contexts_compose_and_undo():
    model, images = _setup(9)
    clean = model.encode_image(images)
    means = ablation.component_means(model, [images], mode="direct")
    with ablation.zero_ablate(model, ["L0H0"], "total"), ablation.mean_ablate(model, ["L1H1"], means, "direct"):
        both = model.encode_image(images)
    assert (both - clean).abs().max() > 1e-6
    torch.testing.assert_close(model.encode_image(images), clean, rtol=0, atol=0)
    assert all(not h.fwd_fns for h in model.hook_dict.values())


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    fp64=st.booleans(),
    kind=st.sampled_from(["mean", "zero", "project"]),
    outer=st.sets(st.sampled_from(SETS), min_size=1),
    inner=st.sets(st.sampled_from(SETS), min_size=1),
)
def test_nested_direct_contexts_equal_one_context(seed, fp64, kind, outer, inner):
    """Nesting A then B equals one context over A ∪ B; where they overlap, the inner
    replacement acts on the outer one's result (as nested hooks do in total mode)."""
    model, images = _setup(seed)
    if not fp64:
        model, images = model.float(), images.float()
    means = ablation.component_means(model, [images[:2]], mode="direct")
    u = torch.randn(2, 16, generator=torch.Generator().manual_seed(seed)).to(images)
    make = {
        "mean": lambda comps: ablation.mean_ablate(model, comps, means, "direct"),
        "zero": lambda comps: ablation.zero_ablate(model, comps, "direct"),
        "project": lambda comps: ablation.project_out(model, comps, u, mode="direct"),
    }[kind]
    outer, inner = sorted(outer), sorted(inner)
    with make(outer), make(inner):
        nested = model.encode_image(images)
    with make(sorted(set(outer) | set(inner))):  # every kind here is idempotent: f(f(x)) = f(x)
        single = model.encode_image(images)
    tol = dict(rtol=0, atol=1e-10) if fp64 else dict(rtol=0, atol=1e-6)
    torch.testing.assert_close(nested, single, **tol)
    assert all(not h.fwd_fns and not h._forward_hooks for h in model.hook_dict.values())


def test_overlapping_direct_contexts_compose_as_functions():
    model, images = _setup(13)
    means = ablation.component_means(model, [images[:2]], ["L1H1"], mode="direct")
    u = torch.randn(1, 16, dtype=torch.float64)
    with (
        ablation.mean_ablate(model, ["L1H1"], means, "direct"),
        ablation.project_out(model, ["L1H1"], u, mode="direct"),
    ):
        nested = model.encode_image(images)
    stack = decompose_image(model, images)
    m = means["L1H1"]
    q = F.normalize(u[0], dim=0)
    replaced = m - (m @ q) * q  # project_out applied to the mean-ablated row
    expected = stack.sum() - stack.select("L1H1").tensor[0] + replaced
    norm = model.encode_image(images).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(nested / norm, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ablation_outside", [True, False])
def test_direct_ablation_with_a_plain_hooks_context(ablation_outside):
    """A ``model.hooks`` edit (here: values of L1 scaled, L0's z scaled) is part of the
    forward the direct ablation decomposes, whichever context is entered first."""
    model, images = _setup(14)

    def scale(x, hook):
        return 1.5 * x

    user = [("visual.blocks.1.attn.hook_v", scale), ("visual.blocks.0.attn.hook_z", scale)]
    means = ablation.component_means(model, [images[:2]], ["L1H1", "mlp0"], mode="direct")
    with model.hooks(fwd_hooks=user):
        edited = model.encode_image(images)
        rows = decompose_image(model, images, components=["L1H1", "mlp0"]).select(["L1H1", "mlp0"]).tensor
    expected = F.normalize(edited, dim=-1) - rows.sum(0) + means["L1H1"] + means["mlp0"]
    first, second = model.hooks(fwd_hooks=user), ablation.mean_ablate(model, ["L1H1", "mlp0"], means, "direct")
    if ablation_outside:
        first, second = second, first
    with first, second:
        out = model.encode_image(images)
    torch.testing.assert_close(out / edited.norm(dim=-1, keepdim=True), expected, rtol=1e-10, atol=1e-12)
    assert (edited - model.encode_image(images)).abs().max() > 1e-3  # the user edit matters


def test_errors():
    model, images = _setup(10)
    with pytest.raises(KeyError, match="component_means"):
        ablation.mean_ablate(model, ["L0H0"], {}, "direct")
    with pytest.raises(ValueError, match="'total' or 'direct'"):
        ablation.zero_ablate(model, ["L0H0"], mode="sideways")
    with pytest.raises(ValueError, match="layers 0..1"):
        ablation.zero_ablate(model, ["L5H0"])
    with pytest.raises(ValueError, match=r"direct mode edits d_out = 16, so they must be \[k, 16\]"):
        ablation.project_out(model, ["L0H0"], torch.randn(2, 32, dtype=torch.float64), mode="direct")
    with pytest.raises(ValueError, match=r"total mode edits d_model = 32"):
        ablation.keep_only(model, ["mlp0"], torch.randn(2, 16, dtype=torch.float64), mode="total")
    with pytest.raises(KeyError, match="no directions for L0H1"):
        ablation.keep_only(model, ["L0H0", "L0H1"], {"L0H0": torch.randn(1, 16, dtype=torch.float64)})
    with pytest.raises(ValueError, match="px"):
        ablation.resample_ablate(model, ["L0H0"], images[:, :, :8])


@pytest.mark.parametrize("mode", ["total", "direct"])
def test_resample_source_of_another_batch_size_is_refused_before_any_block(mode):
    model, images = _setup(15)
    blocks_run = []
    watch = [("visual.blocks.0.hook_resid_pre", lambda x, hook: blocks_run.append(1))]
    with ablation.resample_ablate(model, ["L1H0"], images[:3].flip(0), mode), model.hooks(fwd_hooks=watch):
        with pytest.raises(ValueError, match="source has 3 images but the batch being run has 4"):
            model.encode_image(images)
        assert not blocks_run
        one = model.encode_image(images[:3])
    with ablation.resample_ablate(model, ["L1H0"], images[:1], mode):
        model.encode_image(images)  # one source image broadcasts
    assert one.shape == (3, 16)


def test_direct_ablation_is_differentiable():
    model, images = _setup(11)
    images.requires_grad_(True)
    with ablation.zero_ablate(model, ["L1H0"], mode="direct"):
        model.encode_image(images).sum().backward()
    assert images.grad is not None and images.grad.abs().max() > 0


def test_mean_shape_is_checked():
    model, images = _setup(12)
    with pytest.raises(ValueError, match=r"direct mode needs one of \[\(16,\)\]"):
        ablation.mean_ablate(model, ["L0H0"], {"L0H0": torch.zeros(7)}, "direct")
    with pytest.raises(ValueError, match="total mode"):
        ablation.mean_ablate(model, ["L0H0"], {"L0H0": torch.zeros(32)}, "total")
    ablation.mean_ablate(model, ["L0H0"], {"L0H0": torch.zeros(8)}, "total")  # [d_head] broadcasts


@pytest.mark.parametrize("mode", ["total", "direct"])
def test_component_means_read_every_form_of_batches(mode):
    """``batches`` in the project's one form: image tensors, ``(images, labels[, groups])``
    tuples, a DataLoader's lists, or one bare tensor; labels are not read. The mean is over
    images, not batches, and the default is every component, in decomposition order."""
    from torch.utils.data import DataLoader, TensorDataset

    from hookedclip.components import ALL_COMPONENTS, all_components

    model, images = _setup(13, n=5)
    labels, groups = torch.arange(5), torch.zeros(5, dtype=torch.long)
    expected = ablation.component_means(model, [images], ALL_COMPONENTS, mode=mode)
    cfg = model.cfg.vision
    assert list(expected) == [str(c) for c in all_components(cfg.layers, cfg.heads)]
    forms = {
        "bare tensor": images,
        "uneven image batches": [images[:2], images[2:]],
        "(images, labels)": [(images[:3], labels[:3]), (images[3:], labels[3:])],
        "(images, labels, groups)": [(images[:1], labels[:1], groups[:1]), (images[1:], labels[1:], groups[1:])],
        "DataLoader": DataLoader(TensorDataset(images, labels), batch_size=2),
    }
    for form, batches in forms.items():
        means = ablation.component_means(model, batches, mode=mode)
        assert list(means) == list(expected), form
        for label in expected:
            torch.testing.assert_close(means[label], expected[label], rtol=1e-12, atol=1e-14, msg=form)
    # Not the mean of per-batch means: the uneven split above would differ from it.
    parts = forms["uneven image batches"]
    first, rest = (ablation.component_means(model, part, ["L1H0"], mode=mode)["L1H0"] for part in parts)
    assert (expected["L1H0"] - (first + rest) / 2).abs().max() > 1e-6


def test_component_means_refuse_bad_batches_and_warn_on_none():
    model, images = _setup(14, n=2)
    with pytest.raises(TypeError, match=r"batch 0 is a dict"):
        ablation.component_means(model, [{"image": images}])
    with pytest.raises(ValueError, match="got no images"):
        ablation.component_means(model, [])
    with pytest.raises(ValueError, match="'total' or 'direct'"):
        ablation.component_means(model, [images], mode="sideways")
    with pytest.warns(DeprecationWarning, match="ALL_COMPONENTS"):
        old = ablation.component_means(model, [images], None)
    assert list(old) == list(ablation.component_means(model, [images]))
