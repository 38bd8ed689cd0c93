"""Act×Grad attribution to autoencoder latents (hookedclip.methods.sae.attribution, baselines):
the closed form against autograd, what LayerNorm invariance implies (the latents' attributions
cancel the error node's, they do not sum to the output), first-order consistency, batch and
prompt structure, baselines, and bad input.

Models are tiny random open_clip conversions in float64 with a random ``ln_post`` affine;
autoencoders have random weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP
from hookedclip.identity import ModelMismatch
from hookedclip.methods import sae as S
from hookedclip.methods.sae.attribution import closed_form, layer_norm_state
from hookedclip.names import act_name

SETTINGS = settings(deadline=None, max_examples=12, derandomize=True)
WIDTH, D_OUT, N_TEXTS = 32, 16, 5
F64 = torch.float64


@pytest.fixture(scope="module")
def model() -> HookedCLIP:
    m = HookedCLIP.from_open_clip(tiny_open_clip(seed=5, layers=2, width=WIDTH, embed_dim=D_OUT)).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a random affine, so γ and β matter
        m.visual.ln_post.w.copy_(torch.rand(WIDTH, generator=gen, dtype=F64) + 0.5)
        m.visual.ln_post.b.copy_(0.2 * torch.randn(WIDTH, generator=gen, dtype=F64))
    return m


@pytest.fixture(scope="module")
def images(model) -> torch.Tensor:
    size = model.cfg.vision.image_size
    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=F64)


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    return torch.randn(N_TEXTS, D_OUT, generator=torch.Generator().manual_seed(2), dtype=F64)


def make_sae(model, d_sae=64, k=4, layer=-1, token="cls", activation="topk", seed=0) -> S.TopKSAE:
    sae = S.TopKSAE(S.SAEConfig(WIDTH, d_sae, k, activation=activation, layer=layer, token=token), model=model)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae.double()


def residuals(model, images) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(images, stop_at_layer=model.cfg.n_layers)[:, 0]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ---------------------------------------------------------------------------- closed form = autograd
@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    output=st.sampled_from(["cosine", "logit", "probability"]),
    splice=st.sampled_from(["error_kept", "recon_only"]),
    k=st.integers(1, 12),
    activation=st.sampled_from(["topk", "topk_relu"]),
)
def test_closed_form_equals_autograd(model, images, prompts, seed, output, splice, k, activation):
    sae = make_sae(model, k=k, activation=activation, seed=seed)
    kw = dict(text_embeddings=prompts, output=output, splice=splice)
    closed = S.attribute(model, sae, images, method="closed_form", **kw)
    general = S.attribute(model, sae, images, method="autograd", prompt_chunk=2, **kw)
    assert closed.method == "closed_form" and general.method == "autograd"
    assert relative_error(closed.R, general.R) < 1e-6
    assert relative_error(closed.R_error, general.R_error) < 1e-6 or splice == "recon_only"
    torch.testing.assert_close(closed.y, general.y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed.a, general.a, rtol=0, atol=0)


def test_auto_picks_the_closed_form_before_ln_post_and_autograd_elsewhere(model, images, prompts):
    assert S.attribute(model, make_sae(model), images, text_embeddings=prompts).method == "closed_form"
    assert S.attribute(model, make_sae(model, layer=0), images, text_embeddings=prompts).method == "autograd"


@SETTINGS
@given(seed=st.integers(0, 10_000), outlier=st.floats(5.0, 50.0))
def test_closed_form_matches_finite_differences_with_an_outlier_dimension(model, prompts, seed, outlier):
    """R_j = a_j ∂y/∂a_j by central differences of the readout, for residuals with one huge coordinate."""
    sae = make_sae(model, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(3, WIDTH, generator=gen, dtype=F64)
    h[:, 7] += outlier
    head = S.output_head(model, text_embeddings=prompts)
    part = closed_form(model, sae, h, head)
    step = 1e-6
    for b in range(3):
        for i, j in enumerate(part.latents[b].tolist()):
            atom = sae.W_dec[:, j].detach()
            plus = head(S.head_readout(model, h[b] + step * atom))
            minus = head(S.head_readout(model, h[b] - step * atom))
            expected = part.activations[b, i] * (plus - minus) / (2 * step)
            torch.testing.assert_close(part.R_active[b, :, i], expected, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------- what LN invariance implies
@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_latents_cancel_the_error_node_and_do_not_sum_to_the_output(model, images, prompts, seed):
    sae = make_sae(model, seed=seed)
    result = S.attribute(model, sae, images, text_embeddings=prompts)
    total = result.R.sum(-1)
    # Σ_j R_j + R_ε = hᵀg = O(eps/var(h)): tiny next to the outputs and the attributions themselves
    assert float((total + result.R_error).abs().max()) < 1e-4 * float(result.R.abs().max())
    # the completeness one might expect from other attribution methods does not hold
    assert float((total - result.y).abs().max()) > 0.5 * float(result.y.abs().max())


def test_h_dot_gradient_is_of_order_eps_over_variance(model, images, prompts):
    sae = make_sae(model)
    h = residuals(model, images)
    part = closed_form(model, sae, h, S.output_head(model, text_embeddings=prompts))
    _, sigma = layer_norm_state(model, h)
    bound = model.visual.ln_post.eps / sigma.squeeze(-1).pow(2)  # eps / (var + eps)
    h_dot_g = part.R_active.sum(-1) + part.R_error
    assert (h_dot_g.abs() <= 10 * bound.unsqueeze(-1) * part.R_active.abs().amax((-1, -2)).unsqueeze(-1)).all()


def test_a_part_keeps_R_as_a_deprecated_name_of_R_active(model, images, prompts):
    part = closed_form(model, make_sae(model), residuals(model, images), S.output_head(model, text_embeddings=prompts))
    with pytest.warns(DeprecationWarning, match="R_active"):
        assert torch.equal(part.R, part.R_active)
    result = S.attribute(model, make_sae(model), images, text_embeddings=prompts)
    assert result.R.shape[-1] == result.d_sae  # on the result, R stays the dense tensor


@SETTINGS
@given(seed=st.integers(0, 10_000), scale=st.floats(0.5, 10.0), shift=st.floats(-5.0, 5.0))
def test_outputs_ignore_the_scale_and_shift_of_the_residual(model, prompts, seed, scale, shift):
    """Up to LayerNorm's eps, here at most 1e-5/var(h) ≈ 4e-7."""
    h = 10 * torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(seed), dtype=F64)
    head = S.output_head(model, text_embeddings=prompts)
    torch.testing.assert_close(
        head(S.head_readout(model, scale * h + shift)), head(S.head_readout(model, h)), rtol=1e-5, atol=1e-6
    )


def test_a_latent_whose_atom_is_the_all_ones_direction_gets_zero(model, images, prompts):
    sae = make_sae(model, k=4)
    with torch.no_grad():
        sae.W_dec[:, 3] = WIDTH**-0.5
        sae.W_enc[3] = 0.0
        sae.b_enc[3] = 100.0  # always active
    result = S.attribute(model, sae, images, text_embeddings=prompts)
    assert (result.a[:, 3] != 0).all()
    assert float(result.R[:, :, 3].abs().max()) < 1e-10 * float(result.R.abs().max())


# ---------------------------------------------------------------------------- first order, exact zeros
@pytest.mark.parametrize("layer, token", [(-1, "cls"), (0, "cls"), (0, "spatial")])
@pytest.mark.parametrize("splice", ["error_kept", "recon_only"])
def test_scaling_a_latent_down_changes_the_output_by_minus_s_R(model, images, prompts, layer, token, splice):
    """[y(a_j → (1−s)a_j) − y]/s → −R_j: the relative error shrinks with s (here at 1e-3 and 1e-4)."""
    sae = make_sae(model, layer=layer, token=token, k=6)
    result = S.attribute(model, sae, images, text_embeddings=prompts, splice=splice)
    head = S.output_head(model, text_embeddings=prompts)
    latent = int(result.latents[0, result.R_active[0, 0].abs().argmax()])
    errors = []
    for s in (1e-3, 1e-4):
        effect = _scaled_output(model, sae, images, head, latent, s, splice) - _scaled_output(
            model, sae, images, head, latent, 0.0, splice
        )
        expected = -s * result.R[:, :, latent]
        errors.append(relative_error(effect, expected))
    assert errors[0] < 0.05 and errors[1] < 0.3 * errors[0] + 1e-6


def _scaled_output(model, sae, images, head, latent, s, splice):
    """The spliced model's outputs with latent ``latent`` scaled by ``1 − s`` (the error node keeps
    the error of the unedited code)."""

    def scale(a, hook):
        edited = a.clone()
        edited[..., latent] *= 1 - s
        return edited

    hooks = [("hook_sae_acts_post", scale)]
    with torch.no_grad(), S.splice(model, sae, splice), sae.hooks(fwd_hooks=hooks):
        return head(model.encode_image(images))


@pytest.mark.parametrize("method, layer", [("closed_form", -1), ("autograd", -1), ("autograd", 0)])
def test_inactive_latents_get_exactly_zero(model, images, prompts, method, layer):
    sae = make_sae(model, layer=layer, activation="topk_relu", k=8)
    result = S.attribute(model, sae, images, text_embeddings=prompts, method=method)
    inactive = (result.a == 0).unsqueeze(1).expand_as(result.R)
    assert inactive.any()
    assert torch.equal(result.R[inactive], torch.zeros_like(result.R[inactive]))


def test_autograd_routes_the_gradient_through_the_atoms_at_any_layer(model, images, prompts):
    """R_j = a_j d_jᵀ ∂y/∂h, with the gradient taken in the unspliced model at the layer read."""
    sae = make_sae(model, layer=0)
    result = S.attribute(model, sae, images, text_embeddings=prompts, method="autograd")
    head = S.output_head(model, text_embeddings=prompts)
    site = act_name("resid_post", 0)
    for t in range(N_TEXTS):
        delta = torch.zeros(images.shape[0], WIDTH, dtype=F64, requires_grad=True)

        def add(x, hook, delta=delta):
            return torch.cat([(x[:, 0] + delta).unsqueeze(1), x[:, 1:]], dim=1)

        with model.hooks(fwd_hooks=[(site, add)]):
            (grad,) = torch.autograd.grad(head(model.encode_image(images))[:, t].sum(), [delta])
        expected = result.a * (grad @ sae.W_dec)
        torch.testing.assert_close(result.R[:, t], expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- batch and prompt structure
@pytest.mark.parametrize("method", ["closed_form", "autograd"])
def test_a_batch_equals_one_image_at_a_time_and_permutes_with_it(model, images, prompts, method):
    sae = make_sae(model)
    batched = S.attribute(model, sae, images, text_embeddings=prompts, method=method)
    alone = S.attribute(model, sae, images, text_embeddings=prompts, method=method, batch_size=1)
    torch.testing.assert_close(batched.R, alone.R, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(batched.R_error, alone.R_error, rtol=1e-10, atol=1e-13)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = S.attribute(model, sae, images[perm], text_embeddings=prompts, method=method)
    torch.testing.assert_close(permuted.R, batched.R[perm], rtol=1e-10, atol=1e-13)


@SETTINGS
@given(seed=st.integers(0, 10_000), scales=st.lists(st.floats(0.1, 10.0), min_size=N_TEXTS, max_size=N_TEXTS))
def test_prompt_structure(model, images, prompts, seed, scales):
    """R(x, c·t) = R(x, t); the attribution of Σ_t α_t y_t is Σ_t α_t R_t."""
    sae = make_sae(model, seed=seed)
    plain = S.attribute(model, sae, images, text_embeddings=prompts)
    rescaled = S.attribute(model, sae, images, text_embeddings=prompts * torch.tensor(scales, dtype=F64)[:, None])
    torch.testing.assert_close(rescaled.R, plain.R, rtol=1e-10, atol=1e-13)
    alpha = torch.randn(N_TEXTS, generator=torch.Generator().manual_seed(seed), dtype=F64)
    mixed_column = (F.normalize(prompts, dim=-1).T @ alpha).unsqueeze(-1)
    mixed = S.attribute(model, sae, images, classifier=(mixed_column, torch.zeros(1, dtype=F64)), output="logit")
    torch.testing.assert_close(mixed.R[:, 0], (plain.R * alpha[None, :, None]).sum(1), rtol=1e-9, atol=1e-12)


def test_texts_are_embedded_by_the_model_and_logit_is_the_scaled_cosine(model, images):
    sae = make_sae(model)
    from hookedclip.zeroshot import embed_texts

    model.tokenizer = lambda texts: torch.randint(1, 50, (len(texts), 12), generator=torch.Generator().manual_seed(0))
    try:
        texts = ["a", "b"]
        from_texts = S.attribute(model, sae, images, texts=texts)
        embedded = embed_texts(model, texts)
    finally:
        model.tokenizer = None
    given_ = S.attribute(model, sae, images, texts=texts, text_embeddings=embedded)
    torch.testing.assert_close(from_texts.R, given_.R)
    assert from_texts.texts == texts
    logit = S.attribute(model, sae, images, texts=texts, text_embeddings=embedded, output="logit")
    torch.testing.assert_close(logit.R, model.logit_scale.exp() * given_.R)


# ---------------------------------------------------------------------------- baselines
def test_baseline_identities(model, images, prompts):
    sae = make_sae(model)
    head = S.output_head(model, text_embeddings=prompts)
    lens = S.logit_lens(model, sae, head)
    assert lens.shape == (N_TEXTS, sae.d_sae)
    expected = head(S.head_readout(model, sae.W_dec.T.detach()[5])).squeeze()
    torch.testing.assert_close(lens[:, 5], expected)
    h = residuals(model, images)
    scores = S.method_scores(model, sae, h, head, torch.zeros(4, dtype=torch.long))
    a = sae.encode(h).detach()
    torch.testing.assert_close(scores["LogitLens"], lens[0].expand(4, -1))  # the same for every image
    torch.testing.assert_close(scores["Act×LogitLens"], a * lens[0])
    torch.testing.assert_close(S.act_times_logit_lens(a, lens)[:, 0], a * lens[0])
    torch.testing.assert_close(scores["Energy"], a)  # unit atoms
    assert torch.isinf(scores["Random"][a == 0]).all() and torch.isfinite(scores["Random"][a != 0]).all()
    attribution = S.attribute(model, sae, residuals=h, text_embeddings=prompts)
    torch.testing.assert_close(scores["Act×Grad"], attribution.R[:, 0])


# ---------------------------------------------------------------------------- the result
def test_attribution_result_protocol(model, images, prompts, tmp_path):
    sae = make_sae(model)
    labels = [f"latent {j}" for j in range(sae.d_sae)]
    result = S.attribute(model, sae, images, text_embeddings=prompts, labels=labels)
    top = result.top(2, images=[0], texts=[1])
    assert [row["rank"] for row in top] == [1, 2] and top[0]["R"] >= top[1]["R"]
    assert top[0]["label"] == labels[top[0]["latent"]]
    assert "label" in result.to_csv().splitlines()[0]
    assert "Act×Grad" in str(result) and "tensor" not in repr(result)
    result.plot(tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 0
    back = S.Attribution.load(result.save(tmp_path / "attr"), model=model)
    torch.testing.assert_close(back.R, result.R)
    assert back.labels == labels and back.texts == result.texts
    with pytest.raises(ModelMismatch):
        S.Attribution.load(tmp_path / "attr", model=HookedCLIP.from_open_clip(tiny_open_clip(seed=9, width=WIDTH)))


# ---------------------------------------------------------------------------- bad input
def test_patch_tokens_after_the_last_block_are_refused(model, images, prompts):
    with pytest.raises(ValueError, match="discards.*every attribution would be 0"):
        S.attribute(model, make_sae(model, token="spatial", layer=-1), images, text_embeddings=prompts)


def test_text_embeddings_of_another_model_are_refused(model, images, prompts):
    sae = make_sae(model)
    with pytest.raises(ValueError, match="width 8.*another model"):
        S.attribute(model, sae, images, text_embeddings=torch.randn(3, 8, dtype=F64))
    other = HookedCLIP.from_open_clip(tiny_open_clip(seed=9, width=WIDTH, embed_dim=D_OUT))
    with pytest.raises(ModelMismatch, match="text embeddings"):
        S.attribute(model, sae, images, text_embeddings=prompts, text_model=other)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(splice="off"), "splice must be one of"),
        (dict(method="closed_form", layer=0), "closed form needs"),
        (dict(labels=["x"]), "1 labels for an autoencoder of 64"),
        (dict(output="odds"), "output must be one of"),
        (dict(text_embeddings=None), "nothing to attribute to"),
        (dict(classifier=(torch.zeros(3, 2), torch.zeros(2))), "not both"),
    ],
)
def test_bad_arguments_are_named(model, images, prompts, kwargs, message):
    layer = kwargs.pop("layer", -1)
    kwargs = {"text_embeddings": prompts, **kwargs}
    with pytest.raises(ValueError, match=message):
        S.attribute(model, make_sae(model, layer=layer), images, **kwargs)


def test_a_classifier_of_the_wrong_width_is_named(model, images):
    with pytest.raises(ValueError, match=r"expected \[16, n_classes\]"):
        S.attribute(model, make_sae(model), images, classifier=torch.nn.Linear(8, 2).double())
