"""SITH (hookedclip.methods.sith): per-head SVD of the value-output circuit, the map into the
joint space, the sparse concept decompositions (COMP and its baselines) and the edits; the
properties that hold for any input are also checked under Hypothesis on random heads and problems.

Models are tiny random open_clip conversions and the shipped toy model; the pursuits run on
synthetic dictionaries and are checked against a one-target-at-a-time implementation written
here with scipy's exact NNLS.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP
from hookedclip.identity import ModelMismatch
from hookedclip.methods import sith
from hookedclip.names import act_name

SETTINGS = settings(deadline=None, max_examples=30, derandomize=True)
D_HEAD = 8


@pytest.fixture(scope="module")
def model() -> HookedCLIP:
    return HookedCLIP.from_open_clip(tiny_open_clip(seed=3, layers=3, width=32, head_width=D_HEAD)).double()


@pytest.fixture(scope="module")
def toy() -> HookedCLIP:
    return HookedCLIP.from_pretrained("toy")


def folded_vo(model, layer: int, fold_ln: bool, center: bool) -> torch.Tensor:
    W_V, W_O = sith.head_factors(model, layer, fold_ln, center)
    return W_V @ W_O


# ---------------------------------------------------------------------------------- head SVD
def test_vo_has_rank_at_most_d_head(model):
    vo = folded_vo(model, 1, True, True)
    assert vo.shape == (4, 32, 32)
    assert (torch.linalg.matrix_rank(vo) <= D_HEAD).all()
    result = sith.head_svd(model, 1)
    assert result.S.shape == (4, D_HEAD) and result.U.shape == (4, 32, D_HEAD) and result.Vh.shape == (4, D_HEAD, 32)


@pytest.mark.parametrize("fold_ln", [False, True])
@pytest.mark.parametrize("center", [False, True])
def test_svd_reconstructs_the_folded_centred_vo(model, fold_ln, center):
    result = sith.head_svd(model, 2, fold_ln=fold_ln, center=center)
    vo = folded_vo(model, 2, fold_ln, center)
    assert torch.allclose(result.factored().AB, vo, atol=1e-10)
    eye = torch.eye(D_HEAD, dtype=torch.float64)
    assert torch.allclose(result.U.transpose(-1, -2) @ result.U, eye.expand(4, -1, -1), atol=1e-10)
    assert torch.allclose(result.Vh @ result.Vh.transpose(-1, -2), eye.expand(4, -1, -1), atol=1e-10)
    assert (result.S >= 0).all() and (result.S[:, 1:] <= result.S[:, :-1]).all()


def test_unprocessed_svd_agrees_with_the_core_factored_ov(model):
    result = sith.head_svd(model, 0, fold_ln=False, center=False)
    _, S, _ = model.visual.OV[0].svd()
    assert torch.allclose(result.S, S, atol=1e-10)


def test_rank_truncates_to_the_largest(model):
    full, cut = sith.head_svd(model, 1), sith.head_svd(model, 1, rank=3)
    assert cut.S.shape == (4, 3)
    assert torch.equal(cut.S, full.S[:, :3]) and torch.equal(cut.Vh, full.Vh[:, :3])


def test_fold_and_centre_give_zero_mean_singular_vectors(model):
    result = sith.head_svd(model, 1)
    assert result.U.sum(1).abs().max() < 1e-10
    assert result.Vh.sum(-1).abs().max() < 1e-10
    raw = sith.head_svd(model, 1, fold_ln=False, center=False)
    assert raw.Vh.sum(-1).abs().max() > 1e-3  # the test can fail: without centring they do not


def test_folding_and_centring_leave_the_head_output_unchanged_on_normalised_inputs(model):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 32, generator=gen, dtype=torch.float64) * 3 + 1
    x_hat = F.layer_norm(x, (32,))
    ln1 = model.visual.blocks[1].ln1
    original = torch.einsum("nm,hmd->hnd", x_hat * ln1.w, folded_vo(model, 1, False, False))
    folded = torch.einsum("nm,hmd->hnd", x_hat, folded_vo(model, 1, True, False))
    assert torch.allclose(original, folded, atol=1e-10)
    centred = torch.einsum("nm,hmd->hnd", x_hat, folded_vo(model, 1, True, True))
    shift = centred - original  # a multiple of the all-ones vector per token...
    assert shift.std(-1).max() < 1e-10
    resid = torch.randn(5, 32, generator=gen, dtype=torch.float64)
    # ...which a LayerNorm reading the residual stream removes
    assert torch.allclose(F.layer_norm(resid + original, (32,)), F.layer_norm(resid + centred, (32,)), atol=1e-10)


def test_the_folded_vo_is_what_the_head_computes_in_the_forward(model):
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layer = 2
    names = [act_name("resid_pre", layer), act_name("result", layer), act_name("pattern", layer)]
    _, cache = model.run_with_cache(images, names_filter=names)
    x_hat = F.layer_norm(cache[names[0]], (32,))
    vo = folded_vo(model, layer, True, False)
    predicted = torch.einsum("bhqk,bkm,hmn->bqhn", cache[names[2]], x_hat, vo)
    rest = cache[names[1]] - predicted  # the biases: the same at every token
    assert rest.std(1).max() < 1e-10
    assert rest.abs().max() > 1e-3


def test_sign_convention(model):
    result = sith.head_svd(model, 1)
    largest = result.U.abs().argmax(1, keepdim=True)
    assert (torch.gather(result.U, 1, largest) > 0).all()
    again = sith.head_svd(model, 1)
    assert torch.equal(result.U, again.U) and torch.equal(result.Vh, again.Vh)
    flips = torch.tensor([1.0, -1.0] * (D_HEAD // 2), dtype=torch.float64)
    U, _, Vh = sith.svd.fix_signs(result.U * flips, result.S, result.Vh * flips[:, None])
    assert torch.equal(U, result.U) and torch.equal(Vh, result.Vh)


def test_head_svd_does_not_change_the_model(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sith.head_svd(model, 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_layer_and_rank_are_refused(model):
    with pytest.raises(ValueError, match="out of range.*3 blocks"):
        sith.head_svd(model, 3)
    with pytest.raises(ValueError, match="out of range"):
        sith.head_svd(model, -4)
    assert sith.head_svd(model, -1).layer == 2
    with pytest.raises(ValueError, match="rank must be"):
        sith.head_svd(model, 0, rank=D_HEAD + 1)


def test_head_svd_result_protocol(model, tmp_path):
    result = sith.head_svd(model, 1, rank=2)
    assert "layer=1" in repr(result) and len(repr(result)) < 240
    assert result.summary().startswith("HeadSVD of layer 1")
    assert len(result.to_csv().splitlines()) == 1 + 4 * 2
    result.save(tmp_path / "svd")
    back = sith.HeadSVD.load(tmp_path / "svd", model=model)
    assert torch.equal(back.Vh, result.Vh) and back.layer == 1 and back.fold_ln and back.center
    other = HookedCLIP.from_open_clip(tiny_open_clip(seed=4, layers=3, width=32, head_width=D_HEAD)).double()
    with pytest.raises(ModelMismatch):
        sith.HeadSVD.load(tmp_path / "svd", model=other)


def test_head_svd_on_the_toy_model(toy):
    result = sith.head_svd(toy, -1)
    d_head = toy.visual.blocks[-1].attn.d_head
    assert result.S.shape == (toy.cfg.vision.heads, d_head)
    W_V, W_O = sith.head_factors(toy, -1)
    assert torch.allclose(result.factored().AB, W_V @ W_O, atol=1e-4)


# ---------------------------------------------------------------------------------- joint space
def test_to_joint_reads_a_direction_out_as_the_model_reads_a_residual_state(model):
    v = sith.head_svd(model, 1).Vh
    z = sith.to_joint(model, v)
    assert z.shape == (4, D_HEAD, 16)
    assert torch.allclose(z.norm(dim=-1), torch.ones(4, D_HEAD, dtype=torch.float64))
    n_tokens = model.cfg.vision.n_tokens
    states = torch.zeros(v.shape[0] * v.shape[1], n_tokens, 32, dtype=torch.float64)
    states[:, 0] = v.reshape(-1, 32)  # the class token carries v
    readout = model.encode_image(states, start_at_layer=len(model.visual.blocks))
    assert torch.allclose(z.reshape(-1, 16), F.normalize(readout, dim=-1), atol=1e-10)


def test_to_joint_closed_form_and_polarity(model):
    v = sith.head_svd(model, 1).Vh[0, :3]  # zero-mean unit rows
    ln = model.visual.ln_post
    closed = (ln.w * v / (1 / 32 + ln.eps) ** 0.5 + ln.b) @ model.visual.W_proj
    assert torch.allclose(sith.to_joint(model, v), F.normalize(closed, dim=-1), atol=1e-10)
    assert not torch.allclose(sith.to_joint(model, -v), -sith.to_joint(model, v), atol=1e-3)


def test_to_joint_subtracts_the_image_mean(model, images):
    images = images.double()
    v = sith.head_svd(model, 1).Vh
    mean = F.normalize(model.encode_image(images).detach(), dim=-1).mean(0)
    assert torch.allclose(sith.image_mean(model, [images[:2], images[2:]]), mean, atol=1e-12)
    expected = F.normalize(sith.to_joint(model, v) - mean, dim=-1)
    assert torch.allclose(sith.to_joint(model, v, image_mean=mean), expected, atol=1e-12)
    assert torch.allclose(sith.to_joint(model, v, batches=[images]), expected, atol=1e-12)
    with pytest.raises(ValueError, match="not both"):
        sith.to_joint(model, v, image_mean=mean, batches=[images])
    with pytest.raises(ValueError, match="d_model=32"):
        sith.to_joint(model, torch.zeros(3, 31, dtype=torch.float64))


# ---------------------------------------------------------------------------------- pursuits
def make_problem(seed: int, n: int = 12, m: int = 40, d: int = 10, clustered: bool = True):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(m, d, generator=gen, dtype=torch.float64)
    if clustered:  # shared directions make coherence and zero refit coefficients matter
        raw += 2 * torch.randn(4, d, generator=gen, dtype=torch.float64)[torch.arange(m) % 4]
    D = sith.prepare_dictionary(raw)
    X = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64) + raw[torch.arange(n) % m] * 0.5, dim=-1)
    return X, D


def reference_comp(x: np.ndarray, D: np.ndarray, k: int, lam: float):
    """One target at a time, scores recomputed in full, scipy's exact NNLS."""
    chosen, coef = [], np.zeros(0)
    r = x.copy()
    for step in range(k):
        score = D @ r
        if step:
            score = score + lam * (D @ D[chosen].mean(0))
            score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
        coef, _ = nnls(D[chosen].T, x)
        r = x - coef @ D[chosen]
    return chosen, coef


def check_kkt(X, D, result, tol=1e-9):
    atoms = D[result.indices]
    residual = X - (result.coefficients.unsqueeze(-1) * atoms).sum(1)
    gradient = (atoms @ residual.unsqueeze(-1)).squeeze(-1)  # ⟨d_j, r⟩ for the chosen atoms
    positive = result.coefficients > 0
    assert (result.coefficients >= 0).all()
    assert gradient[positive].abs().max() < tol
    assert (gradient[~positive] <= tol).all()
    assert torch.allclose(residual.norm(dim=-1), result.residual_norms[:, -1], atol=1e-12)


@SETTINGS
@given(
    seed=st.integers(0, 10_000), lam=st.sampled_from([0.0, 0.1, 0.3, 1.0]), k=st.integers(1, 6), clustered=st.booleans()
)
def test_comp_selects_as_the_one_target_reference(seed, lam, k, clustered):
    X, D = make_problem(seed, clustered=clustered)
    result = sith.comp(X, D, k=k, lam=lam)
    for n in range(X.shape[0]):
        chosen, coef = reference_comp(X[n].numpy(), D.numpy(), k, lam)
        assert result.indices[n].tolist() == chosen
        assert np.allclose(result.coefficients[n].numpy(), coef, atol=1e-9)
    check_kkt(X, D, result)


def test_zero_refit_coefficients_keep_their_slot():
    X, D = make_problem(7, n=60)
    result = sith.comp(X, D, k=6, lam=0.3)
    assert (result.coefficients == 0).any()  # the case exists in this problem...
    assert all(len(set(row)) == 6 for row in result.indices.tolist())  # ...and atoms stay distinct


def test_comp_with_lam_zero_is_nnomp():
    X, D = make_problem(1)
    a, b = sith.comp(X, D, k=5, lam=0.0), sith.nnomp(X, D, k=5)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.coefficients, b.coefficients)
    assert b.method == "nnomp"
    named = sith.nnomp(X, D, k=5, concepts=[f"c{j}" for j in range(D.shape[0])], screen=True)
    assert torch.equal(named.indices, b.indices) and named.concepts[0] == "c0"
    with pytest.raises(TypeError, match=r"nnomp\(\) got unexpected option\(s\) \['lam'\]"):
        sith.nnomp(X, D, k=5, lam=0.3)  # lam is what makes COMP; nnomp has none


def test_first_pick_is_the_most_similar_atom():
    X, D = make_problem(2)
    for lam in (0.0, 0.3, 2.0):
        assert torch.equal(sith.comp(X, D, k=3, lam=lam).indices[:, 0], (X @ D.T).argmax(-1))


def test_residual_is_non_increasing_and_prefixes_agree():
    X, D = make_problem(3, n=30)
    for lam in (0.0, 0.3):
        five, six = sith.comp(X, D, k=5, lam=lam), sith.comp(X, D, k=6, lam=lam)
        assert (five.residual_norms[:, 1:] <= five.residual_norms[:, :-1] + 1e-12).all()
        assert torch.equal(six.indices[:, :5], five.indices)


def test_batching_and_chunking_equal_one_target_at_a_time():
    X, D = make_problem(4, n=25)
    whole = sith.comp(X, D, k=4)
    chunked = sith.comp(X, D, k=4, max_memory=1)  # one target per chunk
    single = [sith.comp(X[n], D, k=4) for n in range(X.shape[0])]
    assert torch.equal(whole.indices, chunked.indices)
    assert torch.allclose(whole.coefficients, chunked.coefficients, atol=1e-13)
    assert torch.equal(whole.indices, torch.stack([s.indices for s in single]))
    assert single[0].indices.shape == (4,)


def test_leading_target_axes_are_kept():
    X, D = make_problem(5, n=12)
    result = sith.comp(X.reshape(3, 4, -1), D, k=2)
    assert result.indices.shape == (3, 4, 2)
    assert torch.equal(result.indices.reshape(12, 2), sith.comp(X, D, k=2).indices)


def test_dictionary_permutation_permutes_the_indices():
    X, D = make_problem(6)
    perm = torch.randperm(D.shape[0], generator=torch.Generator().manual_seed(0))
    a, b = sith.comp(X, D, k=4), sith.comp(X, D[perm], k=4)
    assert torch.equal(perm[b.indices], a.indices)


def test_scale_nnomp_invariant_comp_refuses_non_unit_targets():
    X, D = make_problem(8)
    a, b = sith.nnomp(X, D, k=4), sith.nnomp(3 * X, D, k=4)
    assert torch.equal(a.indices, b.indices) and torch.allclose(3 * a.coefficients, b.coefficients)
    with pytest.raises(ValueError, match="unit rows"):
        sith.comp(3 * X, D, k=4, lam=0.3)


def test_bad_input_is_refused():
    X, D = make_problem(9)
    with pytest.raises(ValueError, match="10 wide but the targets are 9 wide"):
        sith.comp(X[:, :9], D, k=3)
    with pytest.raises(ValueError, match="k must be an integer in 1..40"):
        sith.comp(X, D, k=41)
    with pytest.raises(ValueError, match="dictionary must be"):
        sith.top_k(X, D[0], k=1)
    with pytest.raises(ValueError, match="share dtype"):
        sith.comp(X, D.float(), k=3)


def test_prepare_dictionary():
    raw = torch.randn(50, 6, dtype=torch.float64) + 3
    D = sith.prepare_dictionary(raw)
    assert torch.allclose(D.norm(dim=-1), torch.ones(50, dtype=torch.float64))
    unit = F.normalize(raw, dim=-1)
    centred = unit - unit.mean(0)
    assert torch.allclose(centred.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(D, F.normalize(centred, dim=-1))


def test_matching_pursuit_against_a_loop():
    X, D = make_problem(10)
    result = sith.matching_pursuit(X, D, k=4)
    for n in range(X.shape[0]):
        r, chosen = X[n].clone(), []
        for _ in range(4):
            score = D @ r
            score[chosen] = -torch.inf
            j = int(score.argmax())
            c = max(float(score[j]), 0.0)
            chosen.append(j)
            r = r - c * D[j]
        assert result.indices[n].tolist() == chosen
        assert torch.isclose(result.residual_norms[n, -1], r.norm())


def test_top_k_and_lasso():
    from sklearn.linear_model import Lasso

    X, D = make_problem(11)
    top = sith.top_k(X, D, k=3)
    assert torch.equal(top.indices, (X @ D.T).topk(3).indices)
    for n in range(X.shape[0]):
        assert np.allclose(top.coefficients[n].numpy(), nnls(D[top.indices[n]].numpy().T, X[n].numpy())[0])
    result = sith.lasso(X, D, k=3, l1_penalty=0.05)
    direct = Lasso(alpha=0.05 / 20, fit_intercept=False, positive=True, max_iter=10000, tol=1e-6)
    codes = direct.fit(D.numpy().T, X[0].numpy()).coef_
    assert (result.coefficients >= 0).all()
    assert np.isclose(result.coefficients[0, 0].item(), codes.max())
    assert result.indices[0, 0].item() == int(np.argmax(codes))


def test_pursuit_result_protocol(tmp_path):
    X, D = make_problem(12, n=3)
    names = [f"concept {i}" for i in range(D.shape[0])]
    result = sith.comp(X, D, k=2, concepts=names)
    assert "concept" in result.summary() and len(result.to_csv().splitlines()) == 1 + 3 * 2
    result.save(tmp_path / "p")
    back = sith.Pursuit.load(tmp_path / "p")
    assert torch.equal(back.indices, result.indices) and back.concepts == names and back.lam == 0.3
    dense = result.dense(D.shape[0])
    assert torch.allclose(dense @ D, result.reconstruct(D))


def test_end_to_end_on_the_toy_model(toy):
    svd = sith.head_svd(toy, -1, rank=4)
    z = sith.to_joint(toy, svd.Vh, image_mean=torch.zeros(toy.cfg.vision.output_dim))
    D = sith.prepare_dictionary(torch.randn(64, toy.cfg.vision.output_dim, generator=torch.Generator().manual_seed(0)))
    result = sith.comp(z, D, k=3)
    assert result.indices.shape == (toy.cfg.vision.heads, 4, 3)
    assert (result.residual_norms <= 1 + 1e-6).all()


# ---------------------------------------------------------------------------------- edits
EDIT = {("L1H1", 0): 0.0, ("L1H1", 2): -1.0, ("L2H0", 1): 2.5}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / a.norm())


@pytest.mark.parametrize("which", ["tiny", "toy"])
def test_hook_edit_equals_weight_edit(which, model, toy):
    net = model if which == "tiny" else toy
    size = net.cfg.vision.image_size
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2)).to(net.dtype)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    clean = net.encode_image(images)
    with sith.edit(net, EDIT):
        hooked = net.encode_image(images)
    weights = sith.edited(net, EDIT).encode_image(images)
    assert rel(clean, hooked) > 1e-2  # the edit does something
    assert rel(hooked, weights) < 1e-5
    assert torch.equal(net.encode_image(images), clean)  # the context undid itself
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # edited() copied


def test_multiplier_one_is_the_identity(model, images):
    images = images.double()
    clean = model.encode_image(images)
    with sith.edit(model, {("L1H1", 0): 1.0, ("L0H3", 5): 1.0}):
        assert rel(clean, model.encode_image(images)) < 1e-12
    assert rel(clean, sith.edited(model, {("L1H1", 0): 1.0}).encode_image(images)) < 1e-12


def test_zeroing_every_channel_leaves_only_the_head_bias(model, images):
    from hookedclip import ablation

    images = images.double()
    attn, ln1 = model.visual.blocks[1].attn, model.visual.blocks[1].ln1
    bias = ((ln1.b @ attn.W_V[2] + attn.b_V[2]) @ attn.W_O[2]).detach()
    with sith.edit(model, {("L1H2", i): 0.0 for i in range(D_HEAD)}):
        zeroed = model.encode_image(images)
    with ablation.intervene(model, ["L1H2"], lambda x, c: bias.expand_as(x), head_space="result"):
        constant = model.encode_image(images)
    assert rel(constant, zeroed) < 1e-10


def test_edit_composes_with_other_contexts(model, images):
    from hookedclip import ablation

    images = images.double()
    with sith.edit(model, EDIT), ablation.zero_ablate(model, ["L0H1"]):
        a = model.encode_image(images)
    with ablation.zero_ablate(model, ["L0H1"]), sith.edit(model, EDIT):
        b = model.encode_image(images)
    assert torch.allclose(a, b, atol=1e-12)
    assert not ablation.active(model)


def test_bad_edits_are_refused(model):
    with pytest.raises(ValueError, match="out of range 0..7"):
        sith.edit(model, {("L1H1", 8): 0.0})
    with pytest.raises(ValueError, match="each key names one head"):
        sith.edit(model, {("L1", 0): 0.0})
    with pytest.raises(ValueError, match="finite"):
        sith.edited(model, {("L1H1", 0): float("nan")})
    with pytest.raises(ValueError, match="non-empty dict"):
        sith.edit(model, {})


# ---------------------------------------------------------------------------------- the exact NNLS
@SETTINGS
@given(seed=st.integers(0, 10_000), k=st.integers(1, 8), shared=st.floats(0.0, 3.0))
def test_nnls_matches_scipy(seed, k, shared):
    from hookedclip.methods.sith.nnls import nnls_gram

    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(6, k, 12, generator=gen, dtype=torch.float64)
    atoms = F.normalize(atoms + shared * torch.randn(6, 1, 12, generator=gen, dtype=torch.float64), dim=-1)
    x = torch.randn(6, 12, generator=gen, dtype=torch.float64)
    c = nnls_gram(atoms @ atoms.transpose(1, 2), (atoms @ x.unsqueeze(-1)).squeeze(-1))
    for n in range(6):
        assert np.allclose(c[n].numpy(), nnls(atoms[n].numpy().T, x[n].numpy())[0], atol=1e-9)


def test_duplicate_atoms_in_the_dictionary():
    X, D = make_problem(13)
    D = torch.cat([D, D[:10]])  # rows 40..49 repeat rows 0..9
    result = sith.comp(X, D, k=6, lam=1.0)
    rows = result.indices.tolist()
    assert any(j + 40 in row for row in rows for j in row if j < 10)  # coherence picks a row and its copy
    check_kkt(X, D, result)
    assert torch.isfinite(result.coefficients).all()


# ---------------------------------------------------------------------------------- properties over random inputs
def perturbed(model, seed: int):
    """A copy of ``model`` whose ln1 gains, W_V and W_O are redrawn from ``seed``."""
    import copy

    gen = torch.Generator().manual_seed(seed)
    new = copy.deepcopy(model)
    with torch.no_grad():
        for block in new.visual.blocks:
            for p in (block.attn.W_V, block.attn.W_O):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * p.std())
            block.ln1.w.copy_(1 + 0.5 * torch.randn(block.ln1.w.shape, generator=gen, dtype=block.ln1.w.dtype))
            block.ln1.b.copy_(0.3 * torch.randn(block.ln1.b.shape, generator=gen, dtype=block.ln1.b.dtype))
    return new


@SETTINGS
@given(seed=st.integers(0, 10_000), layer=st.integers(0, 2), fold_ln=st.booleans(), center=st.booleans())
def test_svd_properties_on_random_heads(model, seed, layer, fold_ln, center):
    net = perturbed(model, seed)
    result = sith.head_svd(net, layer, fold_ln=fold_ln, center=center)
    vo = folded_vo(net, layer, fold_ln, center)
    assert (torch.linalg.matrix_rank(vo) <= D_HEAD).all()
    assert torch.allclose(result.factored().AB, vo, atol=1e-9)
    largest = result.U.abs().argmax(1, keepdim=True)
    assert (torch.gather(result.U, 1, largest) > 0).all()
    again = sith.head_svd(net, layer, fold_ln=fold_ln, center=center)
    assert torch.equal(result.U, again.U) and torch.equal(result.Vh, again.Vh)  # deterministic
    # folding and centring leave what the head does to a LayerNorm reading its output unchanged
    x_hat = F.layer_norm(torch.randn(4, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), (32,))
    ln1 = net.visual.blocks[layer].ln1
    raw = torch.einsum("nm,hmd->hnd", x_hat * ln1.w, folded_vo(net, layer, False, False))
    processed = torch.einsum("nm,hmd->hnd", x_hat if fold_ln else x_hat * ln1.w, vo)
    assert torch.allclose(F.layer_norm(raw, (32,)), F.layer_norm(processed, (32,)), atol=1e-9)


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    head=st.integers(0, 3),
    i=st.integers(0, D_HEAD - 1),
    m=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 3.0]),
)
def test_edit_properties_on_random_heads(model, seed, head, i, m):
    from hookedclip import ablation

    net = perturbed(model, seed)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    edit = {(f"L1H{head}", i): m}
    clean = net.encode_image(images)
    with sith.edit(net, edit):
        hooked = net.encode_image(images)
    assert rel(hooked, sith.edited(net, edit).encode_image(images)) < 1e-9  # hook edit = weight edit
    if m == 1.0:
        assert rel(clean, hooked) < 1e-12  # m = 1 is the identity
    # the spec's hook form on the bias-free head output r: r + (m - 1)(r · v) v; m = -1 reflects
    attn, ln1 = net.visual.blocks[1].attn, net.visual.blocks[1].ln1
    bias = ((ln1.b @ attn.W_V[head] + attn.b_V[head]) @ attn.W_O[head]).detach()
    v = sith.head_svd(net, 1).Vh[head, i]

    def reference(x, component):
        r = x - bias
        return x + (m - 1) * (r @ v)[..., None] * v

    with ablation.intervene(net, [f"L1H{head}"], reference, head_space="result"):
        assert rel(hooked, net.encode_image(images)) < 1e-9


@SETTINGS
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6), chunk=st.integers(1, 13), clustered=st.booleans())
def test_pursuit_properties_on_random_problems(seed, k, chunk, clustered):
    X, D = make_problem(seed, n=13, clustered=clustered)
    zero, omp = sith.comp(X, D, k=k, lam=0.0), sith.nnomp(X, D, k=k)
    assert torch.equal(zero.indices, omp.indices) and torch.equal(zero.coefficients, omp.coefficients)
    for lam in (0.0, 0.3):
        whole = sith.comp(X, D, k=k, lam=lam)
        assert (whole.residual_norms[:, 1:] <= whole.residual_norms[:, :-1] + 1e-12).all()  # non-increasing
        check_kkt(X, D, whole)  # the refit's optimality conditions
        per_row = 3 * D.shape[0] * D.element_size()
        chunked = sith.comp(X, D, k=k, lam=lam, max_memory=chunk * per_row)  # chunks of `chunk` targets
        assert torch.equal(whole.indices, chunked.indices)
        assert torch.allclose(whole.coefficients, chunked.coefficients, atol=1e-12)
        single = sith.comp(X[seed % 13], D, k=k, lam=lam)  # one target alone
        assert torch.equal(single.indices, whole.indices[seed % 13])


# ---------------------------------------------------------------------------------- the bfloat16 screen
def test_the_bfloat16_error_bound_holds():
    from hookedclip.methods.sith.screen import error_bound

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(64, 300, generator=gen) * torch.rand(64, 1, generator=gen) * 5
    D = torch.randn(500, 300, generator=gen) * torch.rand(500, 1, generator=gen)
    approx = (q.bfloat16() @ D.bfloat16().T).float()
    exact = q.double() @ D.double().T
    bound = error_bound(300) * q.double().norm(dim=-1, keepdim=True) * D.double().norm(dim=-1)
    assert ((approx.double() - exact).abs() <= bound).all()
    assert ((approx.double() - exact).abs() > bound / 50).any()  # the bound is not vacuous


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    lam=st.sampled_from([0.0, 0.3, 1.0]),
    k=st.integers(1, 6),
    m=st.sampled_from([8, 40, 300]),
    duplicates=st.booleans(),
)
def test_screened_selection_equals_the_exact_one(seed, lam, k, m, duplicates):
    gen = torch.Generator().manual_seed(seed)
    D = sith.prepare_dictionary(torch.randn(m, 24, generator=gen) + 2 * torch.randn(1, 24, generator=gen))
    if duplicates:  # exact ties: the lowest index must still win
        D = torch.cat([D, D[: m // 2]])
    X = F.normalize(torch.randn(50, 24, generator=gen) + D[torch.arange(50) % m], dim=-1)
    exact, screened = sith.comp(X, D, k=k, lam=lam), sith.comp(X, D, k=k, lam=lam, screen=True)
    assert torch.equal(exact.indices, screened.indices)
    assert torch.equal(exact.coefficients, screened.coefficients)


def test_uncertified_rows_are_scored_again_exactly(monkeypatch):
    from hookedclip.methods.sith import screen

    monkeypatch.setattr(screen, "CANDIDATES", 1)  # one candidate, then two: many rows cannot be certified
    monkeypatch.setattr(screen, "WIDER", 2)
    calls = []
    exact_rows = screen._exact
    monkeypatch.setattr(screen, "_exact", lambda q, *a: calls.append(len(q)) or exact_rows(q, *a))
    X, D = make_problem(9, n=40, m=200, d=16)
    X, D = X.float(), D.float()
    found = sith.comp(X, D, k=4, lam=0.3, screen=True)
    assert calls and torch.equal(found.indices, sith.comp(X, D, k=4, lam=0.3).indices)
