"""Ablation contexts: identities of the spec's property list and equivalence with weight edits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hookedclip import HookedCLIP, ablation
from hookedclip.decompose import decompose_image
from tests.conftest import tiny_open_clip


def _setup(seed=0, n=4, **kw):
    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=seed, **kw)).double()
    images = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return model, images


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), mode=st.sampled_from(["total", "direct"]),
       kind=st.sampled_from(["zero", "mean", "resample", "project", "keep"]))
def test_ablating_nothing_is_identity(seed, mode, kind):
    model, images = _setup(seed)
    clean = model.encode_image(images)
    means = ablation.component_means(model, [images], mode=mode)
    ctx = {
        "zero": lambda: ablation.zero_ablate(model, [], mode),
        "mean": lambda: ablation.mean_ablate(model, [], means, mode),
        "resample": lambda: ablation.resample_ablate(model, [], images.flip(0), mode),
        "project": lambda: ablation.project_out(model, [], torch.randn(2, 16 if mode == "direct" else 32).double(), mode=mode),
        "keep": lambda: ablation.keep_only(model, [], torch.randn(2, 16 if mode == "direct" else 32).double(), mode=mode),
    }[kind]
    with ctx():
        torch.testing.assert_close(model.encode_image(images), clean, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["total", "direct"])
def test_own_mean_on_repeated_image_changes_nothing(mode):
    model, images = _setup(1)
    same = images[:1].expand(3, -1, -1, -1).contiguous()
    comps = ["L0H1", "L1H2", "mlp0", "embed"]
    means = ablation.component_means(model, [same], comps, mode=mode)
    with ablation.mean_ablate(model, comps, means, mode):
        torch.testing.assert_close(model.encode_image(same), model.encode_image(same), rtol=0, atol=0)
        ablated = model.encode_image(same)
    torch.testing.assert_close(ablated, model.encode_image(same), rtol=1e-10, atol=1e-12)


def test_direct_ablation_of_everything_leaves_the_bias_row():
    model, images = _setup(2)
    every = ["embed", "L0-1", "mlp0", "mlp1"]
    with ablation.zero_ablate(model, every, mode="direct"):
        out = model.encode_image(images)
    torch.testing.assert_close(out, model.visual.b_proj.expand_as(out), rtol=0, atol=1e-12)


def test_mean_ablating_everything_gives_a_constant_and_keeps_the_mean():
    """Properties 7 and 8 (direct mode, normalised rows)."""
    model, images = _setup(3, n=6)
    every = ["embed", "L0-1", "mlp0", "mlp1"]
    means = ablation.component_means(model, [images], mode="direct")
    with ablation.mean_ablate(model, every, means, mode="direct"):
        out = F.normalize(model.encode_image(images), dim=-1)
    torch.testing.assert_close(out, out[:1].expand_as(out), rtol=1e-10, atol=1e-12)
    some = ["L1H0", "L1H3", "mlp0"]
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


def test_errors():
    model, images = _setup(10)
    with pytest.raises(KeyError, match="component_means"):
        ablation.mean_ablate(model, ["L0H0"], {}, "direct")
    with pytest.raises(ValueError, match="'total' or 'direct'"):
        ablation.zero_ablate(model, ["L0H0"], mode="sideways")
    with pytest.raises(ValueError, match="layers 0..1"):
        ablation.zero_ablate(model, ["L5H0"])


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
