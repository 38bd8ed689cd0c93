"""The TopK autoencoder (hookedclip.methods.sae): the activation rule, the atoms, sparse decoding,
the splice into a model in its three modes, gradient routing, reading the reference's
weight-normalised checkpoints, and saving.

Models are tiny random open_clip conversions in float64; autoencoders have random weights.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import tiny_open_clip
from torch import nn

from hookedclip import HookedCLIP, ablation
from hookedclip.identity import ModelMismatch
from hookedclip.methods import sae as S
from hookedclip.names import act_name

SETTINGS = settings(deadline=None, max_examples=25, derandomize=True)
WIDTH = 32


@pytest.fixture(scope="module")
def model() -> HookedCLIP:
    return HookedCLIP.from_open_clip(tiny_open_clip(seed=5, layers=2, width=WIDTH)).double()


@pytest.fixture(scope="module")
def images(model) -> torch.Tensor:
    size = model.cfg.vision.image_size
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def make_sae(model=None, d_sae=64, k=4, layer=-1, token="cls", activation="topk", seed=0) -> S.TopKSAE:
    sae = S.TopKSAE(S.SAEConfig(WIDTH, d_sae, k, activation=activation, layer=layer, token=token), model=model)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae.double()


# ---------------------------------------------------------------------------- the code
@SETTINGS
@given(seed=st.integers(0, 10_000), k=st.integers(1, 16), activation=st.sampled_from(["topk", "topk_relu"]))
def test_code_keeps_the_k_largest_pre_activations(seed, k, activation):
    sae = make_sae(k=k, activation=activation, seed=seed)
    h = torch.randn(5, WIDTH, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z, a = sae.encode_pre(h), sae.encode(h)
    support = z.topk(k, dim=-1).indices
    kept = torch.zeros_like(z, dtype=torch.bool).scatter(-1, support, True)
    expected = z if activation == "topk" else z.clamp_min(0)
    assert torch.equal(a[kept], expected[kept])
    assert torch.equal(a[~kept], torch.zeros_like(a[~kept]))
    if activation == "topk":  # raw values, negative ones included: exactly k non-zeros
        assert ((a != 0).sum(-1) == k).all()


def test_ties_still_give_exactly_k_active_latents():
    sae = make_sae(k=3)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(1.0)  # every pre-activation ties
    a = sae.encode(torch.randn(4, WIDTH, dtype=torch.float64))
    assert ((a != 0).sum(-1) == 3).all()


def test_topk_keeps_negative_values_and_topk_relu_clamps_them():
    raw, relu = make_sae(k=8), make_sae(k=8, activation="topk_relu")
    for sae in (raw, relu):
        with torch.no_grad():
            sae.b_enc.fill_(-100.0)  # every kept pre-activation negative
    h = torch.randn(2, WIDTH, dtype=torch.float64)
    assert (raw.encode(h).sum(-1) < 0).all()
    assert (relu.encode(h) == 0).all()


@SETTINGS
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 4))
def test_atoms_stay_unit_norm_after_optimiser_steps(seed, steps):
    sae = make_sae(seed=seed)
    optimiser = torch.optim.AdamW(sae.parameters(), lr=0.1)
    h = torch.randn(16, WIDTH, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for _ in range(steps):
        loss = (sae(h, mode="recon_only") - h).pow(2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(sae.d_sae, dtype=torch.float64))


def test_sparse_decode_equals_dense_decode():
    sae = make_sae(k=6)
    h = torch.randn(7, 2, WIDTH, dtype=torch.float64)
    values, indices = sae.select(sae.encode_pre(h))
    torch.testing.assert_close(sae.decode_sparse(values, indices), sae.decode(sae.encode(h)))


def test_an_edit_of_the_code_reaches_the_reconstruction():
    sae = make_sae()
    h = torch.randn(3, WIDTH, dtype=torch.float64)
    a = sae.encode(h)
    with sae.hooks(fwd_hooks=[("hook_sae_acts_post", lambda x, hook: 2 * x)]):
        recons = sae(h, mode="recon_only")
    torch.testing.assert_close(recons, sae.decode(2 * a))


def test_hook_points_carry_what_they_name():
    sae = make_sae()
    h = torch.randn(3, WIDTH, dtype=torch.float64)
    seen = {}

    def record(x, hook):
        seen[hook.name] = x.detach().clone()

    with sae.hooks(fwd_hooks=[(lambda name: True, record)]):
        out = sae(h, mode="error_kept")
    assert set(seen) == {f"hook_sae_{n}" for n in ("input", "acts_pre", "acts_post", "recons", "error", "output")}
    torch.testing.assert_close(seen["hook_sae_recons"], sae.decode(seen["hook_sae_acts_post"]))
    torch.testing.assert_close(seen["hook_sae_error"], h - seen["hook_sae_recons"])
    torch.testing.assert_close(seen["hook_sae_output"], out)


# ---------------------------------------------------------------------------- the splice
@SETTINGS
@given(seed=st.integers(0, 10_000), token=st.sampled_from(["cls", "spatial"]), layer=st.sampled_from([0, -1]))
def test_error_kept_splice_leaves_every_value_unchanged(model, images, seed, token, layer):
    sae = make_sae(model, token=token, layer=layer, seed=seed)
    clean = model.encode_image(images)
    with S.splice(model, sae):
        spliced = model.encode_image(images)
    torch.testing.assert_close(spliced, clean, rtol=1e-12, atol=1e-12)


def test_recon_only_splice_writes_the_decoder_output(model, images):
    sae = make_sae(model, layer=0)
    site = act_name("resid_post", 0)
    _, clean = model.run_with_cache(images, names_filter=site)
    with S.splice(model, sae, mode="recon_only"):
        _, spliced = model.run_with_cache(images, names_filter=site)
    torch.testing.assert_close(spliced[site][:, 0], sae.decode(sae.encode(clean[site][:, 0])))
    torch.testing.assert_close(spliced[site][:, 1:], clean[site][:, 1:])


def test_a_spatial_splice_after_the_last_block_cannot_change_the_embedding(model, images):
    sae = make_sae(model, token="spatial", layer=-1)
    clean = model.encode_image(images)
    for mode in S.SPLICE_MODES:
        with S.splice(model, sae, mode=mode):
            torch.testing.assert_close(model.encode_image(images), clean, rtol=0, atol=1e-12)


def test_error_kept_gradients_reach_the_code_through_the_atoms(model, images):
    """∂y/∂a_j = d_jᵀ ∂y/∂h', and the detached error carries nothing back: the autoencoder's input
    receives the encoder path alone, W_encᵀ (1[active] ⊙ ∂y/∂a)."""
    sae = make_sae(model, layer=0)
    grads, codes = {}, {}

    def keep(grad, hook):
        grads[hook.name] = grad.detach().clone()

    def record(x, hook):
        codes[hook.name] = x.detach().clone()

    bwd = [(f"hook_sae_{n}", keep) for n in ("acts_post", "output", "input")]
    with S.splice(model, sae), sae.hooks(fwd_hooks=[("hook_sae_acts_post", record)], bwd_hooks=bwd):
        model.encode_image(images.clone().requires_grad_(True)).pow(2).sum().backward()
    grad_code = grads["hook_sae_acts_post"]
    torch.testing.assert_close(grad_code, grads["hook_sae_output"] @ sae.W_dec)
    active = codes["hook_sae_acts_post"] != 0
    torch.testing.assert_close(grads["hook_sae_input"], (grad_code * active) @ sae.W_enc)


def test_the_splice_composes_with_an_ablation_in_either_order(model, images):
    sae = make_sae(model, layer=0)
    ablate = lambda: ablation.zero_ablate(model, "L1H0")  # noqa: E731
    with S.splice(model, sae, mode="recon_only"), ablate():
        outer_splice = model.encode_image(images)
    with ablate(), S.splice(model, sae, mode="recon_only"):
        outer_ablation = model.encode_image(images)
    torch.testing.assert_close(outer_splice, outer_ablation)
    with S.splice(model, sae, mode="recon_only"):
        assert not torch.allclose(model.encode_image(images), outer_splice)


def test_the_splice_does_not_write_into_tensors_autograd_saved(model, images):
    sae = make_sae(model, layer=0).float()
    m = model.float()
    try:
        with S.splice(m, sae, mode="recon_only"):
            loss = m.encode_image(images.float()).sum()
        loss.backward()  # an in-place overwrite of a saved tensor would raise here
    finally:
        model.double()
    assert sae.W_enc.grad is not None and sae.W_enc.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- bad input
def test_an_autoencoder_of_another_model_is_refused(model, images):
    other = HookedCLIP.from_open_clip(tiny_open_clip(seed=6, layers=2, width=WIDTH)).double()
    with pytest.raises(ModelMismatch, match="autoencoder"):
        S.splice(model, make_sae(other))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(layer=5), IndexError, "out of range"),
        (dict(layer=None), ValueError, "records no layer"),
    ],
)
def test_a_bad_site_is_named(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        S.splice(model, make_sae(**kwargs))


def test_another_width_is_named(model):
    sae = S.TopKSAE(S.SAEConfig(WIDTH + 1, 16, 2, layer=0))
    with pytest.raises(ValueError, match="width"):
        S.splice(model, sae)
    with pytest.raises(ValueError, match="width"):
        sae.encode(torch.randn(2, WIDTH))


def test_k_larger_than_the_dictionary_is_refused():
    with pytest.raises(ValueError, match="k = 9"):
        S.SAEConfig(WIDTH, 8, 9)


def test_an_unknown_mode_is_refused(model):
    with pytest.raises(ValueError, match="error_kept"):
        S.splice(model, make_sae(model), mode="keep")


# ---------------------------------------------------------------------------- files
def test_save_load_round_trip_and_refuses_another_model(model, tmp_path):
    sae = make_sae(model, k=5, token="spatial", activation="topk_relu")
    sae.save(tmp_path / "sae")
    back = S.TopKSAE.load(tmp_path / "sae", model=model)
    assert back.cfg == sae.cfg
    for name, value in sae.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value)
    other = HookedCLIP.from_open_clip(tiny_open_clip(seed=7, layers=2, width=WIDTH))
    with pytest.raises(ModelMismatch):
        S.TopKSAE.load(tmp_path / "sae", model=other)


class _ReferenceSAE(nn.Module):
    """The reference's module shape: a weight-normalised encoder (trainable gains) and a
    weight-normalised decoder without bias, gains fixed at 1."""

    def __init__(self, d: int, h: int, k: int, parametrizations: bool) -> None:
        super().__init__()
        norm = nn.utils.parametrizations.weight_norm if parametrizations else nn.utils.weight_norm
        self.encoder = nn.Sequential(norm(nn.Linear(d, h), dim=0))
        self.decoder = norm(nn.Linear(h, d, bias=False), dim=1)
        self.k = k
        with torch.no_grad():
            gain = self.decoder.parametrizations.weight.original0 if parametrizations else self.decoder.weight_g
            gain.fill_(1.0)

    def forward(self, h):
        z = self.encoder(h)
        values, indices = z.topk(self.k, dim=-1)
        a = torch.zeros_like(z).scatter(-1, indices, values)
        return z, a, self.decoder(a)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("parametrizations", [False, True])
@pytest.mark.parametrize("as_file", [False, True])
def test_reference_checkpoints_fold_into_the_same_forward(tmp_path, parametrizations, as_file):
    torch.manual_seed(0)
    reference = _ReferenceSAE(WIDTH, 48, 5, parametrizations).double()
    with torch.no_grad():  # trained encoder gains differ from the initial row norms
        gain = (
            reference.encoder[0].parametrizations.weight.original0
            if parametrizations
            else reference.encoder[0].weight_g
        )
        gain.mul_(torch.rand_like(gain) + 0.5)
    state = {f"sae.{k}": v for k, v in reference.state_dict().items()}
    source = state
    if as_file:
        source = tmp_path / "last.ckpt"
        torch.save({"state_dict": state, "epoch": 29}, source)
    sae = S.TopKSAE.from_reference(source, k=5, layer=-1)
    h = torch.randn(6, WIDTH, dtype=torch.float64)
    z, a, recons = reference(h)
    torch.testing.assert_close(sae.encode_pre(h), z)
    torch.testing.assert_close(sae.encode(h), a)
    torch.testing.assert_close(sae(h, mode="recon_only"), recons)
    torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(48, dtype=torch.float64))


def test_a_checkpoint_without_autoencoder_weights_is_named():
    with pytest.raises(KeyError, match="encoder"):
        S.from_reference({"visual.proj": torch.zeros(2)}, k=1)


def test_under_error_kept_an_edit_of_the_code_reaches_the_output():
    """The error node holds the error of the unedited code, so editing a latent moves h' by
    exactly W_dec Δa, as with the error dropped."""
    sae = make_sae(k=6)
    h = torch.randn(4, WIDTH, dtype=torch.float64)
    a = sae.encode(h)
    latent = int(a[0].abs().argmax())

    def zero_latent(x, hook):
        x[..., latent] = 0
        return x

    for mode in ("error_kept", "recon_only"):
        clean = sae(h, mode=mode)
        with sae.hooks(fwd_hooks=[("hook_sae_acts_post", zero_latent)]):
            edited = sae(h, mode=mode)
        delta = torch.zeros_like(a)
        delta[:, latent] = -a[:, latent]
        torch.testing.assert_close(edited - clean, sae.decode(delta))


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_with_a_linear_readout_act_times_grad_is_exact(seed):
    """For y = wᵀh' under error_kept, a_j ∂y/∂a_j equals y(a) − y(a with a_j = 0) exactly, and the
    latents' shares plus the error's (wᵀε) add up to y."""
    sae = make_sae(k=5, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(3, WIDTH, generator=generator, dtype=torch.float64)
    w = torch.randn(WIDTH, generator=generator, dtype=torch.float64)
    saved = {}

    def leaf(a, hook):
        saved["a"] = a.detach().requires_grad_(True)
        return saved["a"]

    with sae.hooks(fwd_hooks=[("hook_sae_acts_post", leaf)]):
        y = sae(h, mode="error_kept") @ w
    (grad,) = torch.autograd.grad(y.sum(), saved["a"])
    a = saved["a"].detach()
    R = a * grad
    for j in a[0].nonzero().flatten().tolist():

        def drop(x, hook, j=j):
            x = x.clone()
            x[..., j] = 0
            return x

        with sae.hooks(fwd_hooks=[("hook_sae_acts_post", drop)]):
            y_without = sae(h, mode="error_kept") @ w
        torch.testing.assert_close(R[:, j], (y - y_without).detach())
    error = h - sae.decode(a)
    torch.testing.assert_close(R.sum(-1) + error @ w, y.detach())


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_with_a_linear_readout_deleting_by_act_times_grad_is_lowest_at_every_step(seed):
    """Deleting latents (zeroing them) in the order of R_j = a_j ∂y/∂a_j lowers y = wᵀh' at
    least as much as any other order of the active latents, at every step."""
    sae = make_sae(k=5, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(1, WIDTH, generator=generator, dtype=torch.float64)
    w = torch.randn(WIDTH, generator=generator, dtype=torch.float64)
    a = sae.encode(h)
    active = a[0].nonzero().flatten()
    R = (a * (w @ sae.W_dec))[0, active]  # a_j d_jᵀ w

    def curve(order):
        ys, dropped = [], []
        for j in [None, *order.tolist()]:
            if j is not None:
                dropped.append(int(active[j]))

            def drop(x, hook):
                x = x.clone()
                x[..., dropped] = 0
                return x

            with sae.hooks(fwd_hooks=[("hook_sae_acts_post", drop)]):
                ys.append(float((sae(h, mode="error_kept") @ w).detach()))
        return torch.tensor(ys)

    best = curve(R.argsort(descending=True))
    for _ in range(5):
        other = curve(torch.randperm(len(active), generator=generator))
        assert (best <= other + 1e-9).all()
