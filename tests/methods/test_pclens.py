"""PCLens (hookedclip.methods.pclens*): the per-head PCA, its labels and projector, the PC
selections and their contexts, the query system and the neighbour embeddings.

Synthetic data for the algebra (hypothesis), tiny random open_clip models for the contexts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP, ablation
from hookedclip.data.stats import RunningMoments
from hookedclip.decompose import decompose_image
from hookedclip.methods import pclens
from hookedclip.methods.pclens import (
    PCLensResult,
    PCSelection,
    QuerySystem,
    apply_to_stack,
    choose_rank,
    fit_from_contributions,
    label_pcs,
    pca_from_data,
    pca_from_moments,
    projector,
)
from hookedclip.methods.pclens import selection as pclens_selection
from hookedclip.methods.pclens.query import union

SETTINGS = settings(deadline=None, max_examples=25, derandomize=True)
MODEL_ID = {"model_name": "synthetic", "source": "test", "pretrained": "None", "config_hash": "x", "weights": "y"}


# --------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------


def low_rank(seed: int, n: int, d: int, r: int, noise: float = 0.0) -> torch.Tensor:
    """``[n, d]`` rows: a random mean plus rank-``r`` structure with distinct scales (+ noise)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, r, generator=g, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64)).Q.T
    scales = torch.linspace(3.0, 0.5, r, dtype=torch.float64)
    x = (z * scales) @ basis + torch.randn(d, generator=g, dtype=torch.float64)
    return x + noise * torch.randn(n, d, generator=g, dtype=torch.float64)


def unit_texts(seed: int, m: int, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)


problems = st.tuples(st.integers(0, 10_000), st.integers(8, 40), st.integers(3, 12), st.integers(1, 12)).map(
    lambda t: (t[0], t[1], t[2], min(t[3], t[2], t[1] - 1))
)


def synthetic_result(
    seed: int, n_heads: int = 3, n: int = 30, d: int = 8, r: int = 4, texts: bool = False, **kw
) -> tuple[PCLensResult, dict[str, torch.Tensor]]:
    data = {f"L0H{h}": low_rank(seed + h, n, d, r, noise=1e-3) for h in range(n_heads)}
    emb = sum(data.values()) + low_rank(seed + 99, n, d, d)
    if texts:
        pool = unit_texts(seed, 40, d)
        kw.update(text_embeddings=pool, texts=[f"t{i}" for i in range(40)])
    return fit_from_contributions(data, MODEL_ID, emb, **kw), data


# --------------------------------------------------------------------------------------
# The rank bound on a real model's heads
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> HookedCLIP:
    return HookedCLIP.from_open_clip(tiny_open_clip(seed=3, layers=2, embed_dim=24))


@pytest.fixture(scope="module")
def imgs() -> torch.Tensor:
    return torch.randn(48, 3, 16, 16, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def fitted(model, imgs) -> PCLensResult:
    pool = unit_texts(0, 30, model.cfg.vision.output_dim).float()
    return pclens.fit(
        model,
        imgs.split(16),
        components=["L0-1"],
        texts=[f"text {i}" for i in range(30)],
        text_embeddings=pool,
        n_texts=3,
    )


def test_rank_bound_on_model_heads(model, imgs, fitted):
    d_h = model.cfg.vision.d_head
    assert model.cfg.vision.output_dim > d_h + 3  # otherwise the bound is vacuous
    # fp64 copy: in fp32 the null directions carry ~1e-7 noise, above the 1e-9 rank tolerance
    model64 = HookedCLIP.from_open_clip(tiny_open_clip(seed=3, layers=2, embed_dim=24)).double()
    stack = decompose_image(model64, imgs.double(), components=list(fitted.heads))
    for i, label in enumerate(stack.labels[:-1]):
        x = stack.tensor[i].double()
        s = torch.linalg.svdvals(x - x.mean(0))
        assert int((s > 1e-9 * s[0]).sum()) <= d_h + 3, label
        assert 1 <= fitted[label].k <= d_h + 3


# --------------------------------------------------------------------------------------
# Orthonormal PCs, rank rule, strengths; data and moment paths agree
# --------------------------------------------------------------------------------------


@SETTINGS
@given(problems, st.sampled_from(["singular", "variance"]), st.sampled_from([None, 2, 80]))
def test_orthonormal_and_rank_rule(problem, energy, cap):
    seed, n, d, r = problem
    x = low_rank(seed, n, d, r, noise=1e-2)
    pca = pca_from_data(x, energy=energy, max_pcs=cap)
    v = pca.components
    assert torch.allclose(v @ v.T, torch.eye(pca.k, dtype=v.dtype), atol=1e-10)
    assert bool((pca.singular_values[1:] <= pca.singular_values[:-1] + 1e-12).all())
    assert float(pca.strength_rel.sum()) == pytest.approx(100.0)
    s_all = torch.linalg.svdvals(x - x.mean(0))
    e = s_all if energy == "singular" else s_all**2
    frac = e.cumsum(0) / e.sum()
    smallest = int(torch.nonzero(frac >= 0.99 - 1e-12)[0]) + 1
    assert pca.k == (smallest if cap is None else max(1, min(smallest, cap)))
    moments = pca_from_moments(RunningMoments.of(x), energy=energy, max_pcs=cap)
    assert moments.k == pca.k
    assert torch.allclose(moments.singular_values, pca.singular_values, rtol=1e-6, atol=1e-8)
    # canonical signs make both paths return the same vectors (up to degenerate pairs)
    assert torch.allclose(
        (moments.components * pca.components).sum(1).abs(), torch.ones(pca.k, dtype=v.dtype), atol=1e-6
    )


def test_choose_rank_examples():
    s = torch.tensor([50.0, 30.0, 19.5, 0.3, 0.2])  # cumsum/ΣS: .5 .8 .995 .998 1.0
    assert choose_rank(s) == 3
    assert choose_rank(s, max_pcs=2) == 2
    assert choose_rank(s, threshold=0.996) == 4
    assert choose_rank(s, threshold=0.9) == 3
    # variance: S² = 2500, 900, 380.25, ...; cumsum/ΣS² = .661 .899 .99997 -> the same 3 at 99%,
    # but 2 at 85%, where ΣS needs 3
    assert choose_rank(s, energy="variance") == 3
    assert choose_rank(s, threshold=0.85) == 3
    assert choose_rank(s, threshold=0.85, energy="variance") == 2
    assert choose_rank(torch.zeros(4)) == 0
    with pytest.raises(ValueError, match="energy"):
        choose_rank(s, energy="bogus")


def test_canonical_and_raw_signs():
    x = low_rank(1, 30, 6, 4)
    canon = pca_from_data(x, sign="canonical")
    idx = canon.components.abs().argmax(1)
    assert bool((canon.components.gather(1, idx[:, None]) > 0).all())
    raw = pca_from_data(x, sign="raw")
    assert torch.allclose(raw.components.abs(), canon.components.abs())


# --------------------------------------------------------------------------------------
# The projector Π
# --------------------------------------------------------------------------------------


@SETTINGS
@given(problems, st.integers(2, 60), st.booleans())
def test_projector_properties(problem, m, center):
    seed, n, d, r = problem
    x = low_rank(seed, n, d, r, noise=1e-3)
    pca = label_pcs(pca_from_data(x), unit_texts(seed, m, d), [str(i) for i in range(m)], 1, center_texts=center)
    P = pca.projector
    assert torch.allclose(P, P.T, atol=1e-10)
    assert torch.allclose(P @ P, P, atol=1e-8)
    p_t = pclens.text_coordinates(pca, unit_texts(seed, m, d), center)[pca.pos_idx[:, 0]]
    assert int(torch.linalg.matrix_rank(P)) == int(torch.linalg.matrix_rank(p_t))
    if int(torch.linalg.matrix_rank(p_t)) == pca.k:
        assert torch.allclose(P, torch.eye(pca.k, dtype=P.dtype), atol=1e-8)
        plain = pca.mean + ((x - pca.mean) @ pca.components.T) @ pca.components
        assert torch.allclose(pca.reconstruct(x), plain, atol=1e-8)


def test_shared_top_text_loses_a_dimension():
    x = low_rank(3, 40, 8, 4)
    pca = pca_from_data(x)
    v = pca.components
    g = torch.Generator().manual_seed(0)
    others = torch.randn(20, 8, generator=g, dtype=torch.float64)
    others -= (others @ v[:2].T) @ v[:2]  # no other text touches PCs 0 and 1
    pool = torch.nn.functional.normalize(torch.cat([((v[0] + v[1]) / 2**0.5)[None], others]), dim=1)
    label_pcs(pca, pool, [str(i) for i in range(21)], 1, center_texts=False)
    assert int(pca.pos_idx[0, 0]) == int(pca.pos_idx[1, 0]) == 0
    rank = int(torch.linalg.matrix_rank(pca.projector))
    assert rank <= pca.k - 1
    # Π is applied: the reconstruction loses a direction inside span(v0, v1)
    assert not torch.allclose(pca.reconstruct(x), pca.mean + ((x - pca.mean) @ v.T) @ v, atol=1e-6)


def test_projector_of_singular_matrix():
    p = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    P = projector(p)
    assert int(torch.linalg.matrix_rank(P)) == 1
    assert torch.allclose(
        P @ torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)
    )


# --------------------------------------------------------------------------------------
# Full basis, empty basis, keep/remove complementarity, affinity in w
# --------------------------------------------------------------------------------------


@SETTINGS
@given(problems)
def test_full_basis_is_identity_and_empty_is_mean(problem):
    seed, n, d, r = problem
    x = low_rank(seed, n, d, r)
    pca = pca_from_data(x, threshold=1.0, max_pcs=None)
    assert torch.allclose(pca.reconstruct(x), x, atol=1e-8)
    empty = pca.reconstruct(x, torch.zeros(pca.k, dtype=torch.float64))
    assert torch.equal(empty, pca.mean.expand_as(x))


@SETTINGS
@given(problems, st.integers(0, 2**16))
def test_keep_remove_complementarity_and_affinity(problem, mask_bits):
    seed, n, d, r = problem
    x = low_rank(seed, n, d, r, noise=1e-2)
    pca = label_pcs(pca_from_data(x), unit_texts(seed, 25, d), [str(i) for i in range(25)], 1)
    s = torch.tensor([(mask_bits >> i) & 1 for i in range(pca.k)], dtype=torch.float64)
    keep_s, remove_s = pca.reconstruct(x, s), pca.reconstruct(x, 1 - s)
    assert torch.allclose(keep_s + remove_s, pca.reconstruct(x) + pca.mean, atol=1e-9)
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(2, pca.k, generator=g, dtype=torch.float64)
    t = 0.3
    mixed = pca.reconstruct(x, t * w1 + (1 - t) * w2)
    assert torch.allclose(mixed, t * pca.reconstruct(x, w1) + (1 - t) * pca.reconstruct(x, w2), atol=1e-9)


# --------------------------------------------------------------------------------------
# The intended PCSelection vs the reference loop
# --------------------------------------------------------------------------------------


def reference_loop(
    attns: torch.Tensor,
    rest: torch.Tensor,
    result: PCLensResult,
    chosen: dict[tuple[int, int], list[int]],
    n_heads: int,
) -> torch.Tensor:
    """The reference implementation's keep-mode loop (ratio=−1, ablation, Π not used):
    a cursor walks the analysed heads; for each selected head (in order) the **cursor** head's
    activation and mean are projected on the selected head's PCs, the cursor head's mean is
    added (twice when the cursor lags), skipped heads get their means, and heads after the
    last selected one get nothing. ``attns [N, L_an, H, d]``; ``rest`` = everything else."""
    means = attns.mean(0)
    out = torch.zeros_like(rest)
    const = torch.zeros(attns.shape[-1], dtype=attns.dtype)
    cursor = (0, 0)
    last = (attns.shape[1] - 1, n_heads - 1)

    def step(c):
        return (c[0], c[1] + 1) if c[1] + 1 < n_heads else (c[0] + 1, 0)

    for layer, head in sorted(chosen):
        v = result[f"L{layer}H{head}"].components
        sel = chosen[(layer, head)]
        mask = torch.zeros(v.shape[0], dtype=attns.dtype)
        mask[sel] = 1
        out += ((attns[:, cursor[0], cursor[1]] @ v.T) * mask) @ v
        const += ((-means[cursor] @ v.T) * mask) @ v + means[cursor]
        while cursor != (layer, head):
            const += means[cursor]
            cursor = step(cursor)
            if cursor == last:
                break
        cursor = step((layer, head))
    return out + rest + const


def _model_free(seed: int, n_layers: int = 2, n_heads: int = 2, n: int = 30, d: int = 8):
    attns = torch.stack(
        [torch.stack([low_rank(seed + 10 * l + h, n, d, 4, 1e-3) for h in range(n_heads)], 1) for l in range(n_layers)],
        1,
    )  # [N, L, H, d]
    rest = low_rank(seed + 500, n, d, d)
    contributions = {f"L{l}H{h}": attns[:, l, h] for l in range(n_layers) for h in range(n_heads)}
    result = fit_from_contributions(contributions, MODEL_ID, attns.sum((1, 2)) + rest)
    return attns, rest, result


def _intended(attns, rest, result, chosen):
    sel = PCSelection.indicator(result, [(f"L{l}H{h}", i) for (l, h), pcs in chosen.items() for i in pcs])
    out = rest.clone()
    for label, w in sel.weights.items():
        l, h = int(label[1]), int(label[3])
        out += result[label].reconstruct(attns[:, l, h], w)
    return out


@SETTINGS
@given(st.integers(0, 1000), st.data())
def test_intended_equals_reference_when_every_head_is_selected(seed, data):
    attns, rest, result = _model_free(seed)
    chosen = {}
    for l in range(2):
        for h in range(2):
            k = result[f"L{l}H{h}"].k
            chosen[(l, h)] = sorted(data.draw(st.sets(st.integers(0, k - 1), min_size=1, max_size=k)))
    assert torch.allclose(
        reference_loop(attns, rest, result, chosen, 2), _intended(attns, rest, result, chosen), atol=1e-10
    )


def test_reference_is_wrong_when_a_head_is_skipped():
    attns, rest, result = _model_free(7)
    chosen = {(0, 0): [0], (1, 1): [0, 1]}  # L0H1 and L1H0 have no selected PC
    ref = reference_loop(attns, rest, result, chosen, 2)
    intended = _intended(attns, rest, result, chosen)
    assert float((ref - intended).abs().max()) > 1e-3
    # the intended result mean-ablates the skipped heads exactly
    manual = rest + result["L0H1"].mean + result["L1H0"].mean
    manual = manual + result["L0H0"].reconstruct(attns[:, 0, 0], torch.eye(result["L0H0"].k, dtype=torch.float64)[0])
    w = torch.zeros(result["L1H1"].k, dtype=torch.float64)
    w[:2] = 1
    manual = manual + result["L1H1"].reconstruct(attns[:, 1, 1], w)
    assert torch.allclose(intended, manual, atol=1e-10)


# --------------------------------------------------------------------------------------
# Sign symmetry of labels
# --------------------------------------------------------------------------------------


@SETTINGS
@given(problems, st.integers(0, 100))
def test_sign_flip_swaps_labels(problem, which):
    seed, n, d, r = problem
    x = low_rank(seed, n, d, r, noise=1e-2)
    pool, texts = unit_texts(seed, 30, d), [str(i) for i in range(30)]
    pca = label_pcs(pca_from_data(x), pool, texts, 4)
    i = which % pca.k
    flipped = label_pcs(pca.flip(i), pool, texts, 4)
    a, b = pca.label_of(i), flipped.label_of(i)
    assert [t for t, _ in b.positive] == [t for t, _ in a.negative]
    assert [t for t, _ in b.negative] == [t for t, _ in a.positive]
    assert [c for _, c in b.positive] == pytest.approx([-c for _, c in a.negative])
    # reconstructions unchanged (Π follows the PC through the flip when it is the identity)
    if torch.allclose(pca.projector, torch.eye(pca.k, dtype=torch.float64)) and torch.allclose(
        flipped.projector, torch.eye(pca.k, dtype=torch.float64)
    ):
        assert torch.allclose(pca.reconstruct(x), flipped.reconstruct(x), atol=1e-9)
    assert torch.allclose(pca.flip(i).reconstruct(x), pca.reconstruct(x), atol=1e-9)  # Π conjugated


# --------------------------------------------------------------------------------------
# QuerySystem
# --------------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(0, 1000), st.integers(0, 100), st.floats(0.1, 10.0))
def test_query_equal_to_a_pc_ranks_it_first(seed, which, scale):
    result, _ = synthetic_result(seed, d=10, r=5)
    qs = QuerySystem(result)
    label, i = result.pcs()[which % result.n_pcs]
    v = result[label].components[i]
    out = qs.query_vector(v, top_k=5, approx=1.1)
    assert (out.entries[0].head, out.entries[0].pc) == (label, i)
    assert out.entries[0].score == pytest.approx(1.0)
    assert out.entries[0].cumulative_cos == pytest.approx(1.0)
    # invariant to positive scaling and to PC sign flips
    assert qs.query_vector(scale * v, top_k=5, approx=1.1).pcs == out.pcs
    flipped = PCLensResult({k: (p.flip(0) if k == label else p) for k, p in result.heads.items()}, MODEL_ID)
    assert QuerySystem(flipped).query_vector(v, top_k=5, approx=1.1).pcs == out.pcs


def test_one_head_cumulative_is_projection():
    x = low_rank(2, 40, 10, 4, noise=1e-3)
    result = fit_from_contributions({"L0H0": x}, MODEL_ID)
    q = unit_texts(2, 1, 10)[0]
    out = QuerySystem(result).query_vector(q, top_k=100, approx=2.0)
    v = result["L0H0"].components
    proj = (q @ v.T) @ v
    assert len(out.entries) == result["L0H0"].k
    assert out.reached == pytest.approx(float(proj @ q / (proj.norm() * q.norm())))
    assert out.max_score == pytest.approx(out.reached)


def test_query_stopping_rule_and_union():
    result, _ = synthetic_result(4, d=10, r=5)
    qs = QuerySystem(result)
    q = unit_texts(4, 2, 10)
    full = qs.query_vector(q[0], top_k=1000, approx=2.0)
    assert len(full.entries) == result.n_pcs and full.fraction == pytest.approx(1.0)
    early = qs.query_vector(q[0], top_k=1000, approx=0.5)
    ratios = [e.cumulative_cos / early.max_score for e in early.entries]
    assert ratios[-1] > 0.5 and all(r <= 0.5 for r in ratios[:-1])
    assert len(qs.query_vector(q[0], top_k=3, approx=2.0).entries) == 3
    a, b = qs.query_vector(q[0], top_k=4, approx=2.0), qs.query_vector(q[1], top_k=4, approx=2.0)
    both = union([a, b])
    assert len(both.pcs) == len(set(a.pcs) | set(b.pcs)) and len(set(both.pcs)) == len(both.pcs)
    text = str(a)
    assert "max score" in text and a.entries[0].head in text
    with pytest.warns(DeprecationWarning, match="summary"):
        assert a.to_markdown().count("\n|") == len(a.entries) + 2  # header, rule, rows


def test_query_text_without_a_model_is_an_error():
    result, _ = synthetic_result(1, texts=True)
    with pytest.raises(ValueError, match="model"):
        QuerySystem(result).query_text("a red shape")


def char_tokens(texts: list[str], context: int = 12, vocab: int = 100) -> torch.Tensor:
    """A deterministic stand-in tokenizer for the tiny random model: SOT, one id per
    character, EOT (the ids of open_clip's convention: vocab − 2, vocab − 1)."""
    out = torch.zeros(len(texts), context, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [1 + ord(c) % (vocab - 3) for c in text[: context - 2]]
        out[i, : len(ids) + 2] = torch.tensor([vocab - 2, *ids, vocab - 1])
    return out


@pytest.fixture
def text_model(model):
    before = model.tokenizer
    model.tokenizer = char_tokens
    yield model
    model.tokenizer = before


def test_query_text_embeds_with_the_model_and_centres_by_the_pool_mean(text_model, fitted):
    model = text_model
    from hookedclip.zeroshot import embed_texts

    qs = QuerySystem(fitted, model)
    got = qs.query_text("a red shape", top_k=6, approx=2.0)
    q = embed_texts(model, ["a red shape"])[0].double()
    a = qs.basis @ (q - fitted.text_mean)
    expected = [qs.refs[int(j)] for j in a.abs().argsort(descending=True)[:6]]
    assert got.pcs == expected and got.query == "a red shape"
    assert got.entries[0].coefficient == pytest.approx(float(a[a.abs().argmax()]))
    # centring matters: the uncentred query ranks differently on this pool
    assert qs.query_vector(q, top_k=6, approx=2.0).pcs != expected


def test_query_image_embeds_the_image_and_centres_by_the_mean_image(model, imgs, fitted):
    qs = QuerySystem(fitted, model)
    got = qs.query_image(imgs[5], top_k=4, approx=2.0, name="image 5")
    q = model.encode_image(imgs[5:6], normalize=True)[0].double()
    a = qs.basis @ (q - fitted.image_mean)
    assert got.pcs == [qs.refs[int(j)] for j in a.abs().argsort(descending=True)[:4]]
    assert got.query == "image 5"
    with pytest.raises(ValueError, match="mean image embedding"):
        QuerySystem(PCLensResult(fitted.heads, fitted.model), model).query_image(imgs[0])


def test_query_texts_is_the_deduplicated_union_in_query_order(text_model, fitted):
    model = text_model
    qs = QuerySystem(fitted, model)
    texts = ["a red shape", "a red shape", "a blue square"]  # a repeated concept adds nothing
    singles = [qs.query_text(t, top_k=5, approx=2.0).pcs for t in texts]
    expected = list(dict.fromkeys(singles[0] + singles[1] + singles[2]))
    both = qs.query_texts(texts, top_k=5, approx=2.0)
    assert both.pcs == expected
    assert len(expected) < 15 and len(both.concepts) == 3
    assert both.query == " + ".join(texts) and "union of 3 concepts" in str(both)


def test_selection_from_another_result_is_refused_before_work(model, imgs, fitted):
    """A QueryResult (or PCSelection) names PCs by index: applied to a result whose head has
    fewer PCs it must fail with the head, the index and k, not deep inside a matmul."""
    label = "L1H0"
    k = fitted[label].k
    wide = torch.randn(40, fitted[label].mean.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    bigger = PCLensResult({label: pca_from_data(wide, label, max_pcs=None)}, fitted.model)
    assert bigger[label].k > k
    query = QuerySystem(bigger).query_vector(bigger[label].components[k], top_k=1)
    assert query.pcs == [(label, k)]
    sel = PCSelection.indicator(bigger, [(label, k)])
    stack = decompose_image(model, imgs[:2], components=list(fitted.heads))
    for bad in (query, sel):
        for call in (
            lambda bad=bad: pclens.keep(model, fitted, bad),
            lambda bad=bad: pclens.remove(model, fitted, bad),
            lambda bad=bad: pclens.reweight(model, fitted, bad),
            lambda bad=bad: pclens.amplify(model, fitted, bad, 0.5),
            lambda bad=bad: apply_to_stack(stack, fitted, bad),
            lambda bad=bad: pclens.row_transform(fitted, bad),
            lambda bad=bad: pclens_selection.selection_embeddings(stack, fitted, bad),
        ):
            with pytest.raises((IndexError, ValueError), match=rf"{label}.*\b{k}\b"):
                call()
    with pytest.raises(ValueError, match=rf"names PC {k} of {label}, but {label} has k={k}"):
        pclens.keep(model, fitted, sel)
    with pytest.raises(IndexError, match=rf"{label} has {k} retained PCs .*no PC {k}"):
        pclens.keep(model, fitted, query)
    assert not any(h.fwd_fns for h in model.hook_dict.values())


# --------------------------------------------------------------------------------------
# Contexts on a model
# --------------------------------------------------------------------------------------


def _unit(e: torch.Tensor) -> torch.Tensor:
    return e / e.norm(dim=-1, keepdim=True)


def test_keep_everything_with_full_basis_is_the_identity(model, imgs):
    full = pclens.fit(model, imgs.split(16), components=["L0-1"], threshold=1.0, max_pcs=None)
    e = model.encode_image(imgs)
    sel = PCSelection.indicator(full, full.pcs())
    with pclens.keep(model, full, sel):
        e2 = model.encode_image(imgs)
    assert torch.allclose(e2, e, atol=1e-5, rtol=1e-4)


def test_keep_nothing_is_mean_ablation(model, imgs, fitted):
    means = {label: p.mean.float() for label, p in fitted.heads.items()}
    with ablation.mean_ablate(model, list(fitted.heads), means=means, mode="direct"):
        expected = model.encode_image(imgs)
    with pclens.keep(model, fitted, []):
        got = model.encode_image(imgs)
    assert torch.allclose(got, expected, atol=1e-5)


def test_keep_plus_remove_complementarity_on_model(model, imgs, fitted):
    chosen = [("L1H0", 0), ("L1H2", 1), ("L0H1", 0)]
    e = model.encode_image(imgs)
    with pclens.keep(model, fitted, chosen):
        k = _unit_scale(model.encode_image(imgs), e)
    with pclens.remove(model, fitted, chosen):
        r = _unit_scale(model.encode_image(imgs), e)
    with pclens.keep(model, fitted, fitted.pcs()):
        k_all = _unit_scale(model.encode_image(imgs), e)
    stack = decompose_image(model, imgs, components=list(fitted.heads))
    phi = stack.tensor[:-1].double().sum(0)
    mu = sum(p.mean for p in fitted.heads.values())
    # keep(S) + remove(S) = keep(all) + ê + Σ_h (μ_h − φ_h)   (complementarity, on the embedding)
    assert torch.allclose(k + r, k_all + _unit(e.double()) + mu - phi, atol=1e-5)


def _unit_scale(e2: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    return e2.double() / e.double().norm(dim=-1, keepdim=True)


def test_reweight_matches_closed_form_and_apply_to_stack(model, imgs, fitted):
    g = torch.Generator().manual_seed(1)
    weights = {
        label: torch.randn(p.k, generator=g, dtype=torch.float64)
        for label, p in fitted.heads.items()
        if label.startswith("L1")
    }
    e = model.encode_image(imgs)
    with pclens.reweight(model, fitted, weights):
        got = _unit_scale(model.encode_image(imgs), e)
    stack = decompose_image(model, imgs, components=list(fitted.heads))
    expected = apply_to_stack(stack, fitted, weights).sum().double()
    assert torch.allclose(got, expected, atol=1e-5)
    with pclens.reweight(model, fitted, {label: torch.ones(p.k) for label, p in fitted.heads.items()}):
        same = _unit_scale(model.encode_image(imgs), e)
    with pclens.keep(model, fitted, fitted.pcs()):
        assert torch.allclose(same, _unit_scale(model.encode_image(imgs), e), atol=1e-6)


def test_contexts_compose_with_other_hook_contexts(model, imgs, fitted):
    chosen = [("L1H1", 0), ("L1H3", 1)]
    with ablation.zero_ablate(model, ["mlp0"], mode="total"):
        e = model.encode_image(imgs)
        stack = decompose_image(model, imgs, components=list(fitted.heads))
        with pclens.keep(model, fitted, chosen):
            got = _unit_scale(model.encode_image(imgs), e)
    expected = (
        apply_to_stack(stack, fitted, pclens_selection._full(fitted, PCSelection.indicator(fitted, chosen)))
        .sum()
        .double()
    )
    assert torch.allclose(got, expected, atol=1e-5)
    # hooks are gone afterwards and the nesting order does not matter for a total + direct pair
    with pclens.keep(model, fitted, chosen), ablation.zero_ablate(model, ["mlp0"], mode="total"):
        again = _unit_scale(model.encode_image(imgs), e)
    assert torch.allclose(again, got, atol=1e-5)
    assert not any(h.fwd_fns for h in model.hook_dict.values())


def test_mean_ablate_all_gives_the_concept_only_embedding(model, imgs, fitted):
    chosen = [("L1H0", 0)]
    e = model.encode_image(imgs)
    with pclens.keep(model, fitted, chosen, mean_ablate_all=True):
        got = _unit_scale(model.encode_image(imgs), e)
    stack = decompose_image(model, imgs, components=list(fitted.heads))
    expected = pclens_selection.selection_embeddings(stack, fitted, chosen)
    assert torch.allclose(got, expected, atol=1e-5)
    v = fitted["L1H0"].components[0]
    centred = got - got.mean(0)
    # only PC 0 of L1H0 varies across images
    assert torch.allclose(centred, (centred @ v)[:, None] * v[None], atol=1e-5)


def test_amplify_mixes_norms(model, imgs, fitted):
    with pclens.amplify(model, fitted, [("L1H0", 0)], ratio=1.0):
        e1 = model.encode_image(imgs)
    v = fitted["L1H0"].components[0].float()
    assert torch.allclose(_unit(e1).abs() @ v.abs(), torch.ones(len(imgs)), atol=1e-4)  # e' ∥ ±v
    with pytest.raises(ValueError, match="ratio"):
        pclens.amplify(model, fitted, [("L1H0", 0)], ratio=1.5)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_amplify_matches_its_formula(model, imgs, ratio):
    """The reference's ratio mode: ``e' = ρ n̄ R_S/‖R_S‖ + (1 − ρ) n̄ B/‖B‖`` with
    ``R_S = Σ_sel ⟨φ, v_i⟩ v_i`` (uncentred) and ``B`` = everything else: the non-analysed
    components, every head's mean, minus ``Σ_sel ⟨μ, v_i⟩ v_i``; ``n̄ = ‖mean ê‖``. Written out from a decomposition (Π = I here)."""
    plain = pclens.fit(model, imgs.split(16), components=["L0-1"])  # no texts: Π = I
    chosen = {"L1H0": [0, 2], "L0H3": [1]}
    pcs = [(h, i) for h, idx in chosen.items() for i in idx]
    e = model.encode_image(imgs)
    with pclens.amplify(model, plain, pcs, ratio=ratio):
        got = _unit_scale(model.encode_image(imgs), e)
    stack = decompose_image(model, imgs, components=list(plain.heads))
    rows = {label: stack.tensor[i].double() for i, label in enumerate(stack.labels)}
    r_s = torch.zeros_like(rows["rest"])
    b = rows["rest"].clone()  # earlier layers, MLPs, embedding slot: actual values
    for label, pca in plain.heads.items():
        b = b + pca.mean
        for i in chosen.get(label, []):
            v = pca.components[i]
            r_s = r_s + (rows[label] @ v)[:, None] * v
            b = b - (pca.mean @ v) * v
    n_bar = float(plain.image_mean.norm())
    expected = ratio * n_bar * _unit(r_s) + (1 - ratio) * n_bar * _unit(b)
    assert torch.allclose(got, expected, atol=1e-5)


def test_image_scores_are_cosines_of_the_unit_embedding_with_the_pc():
    """Images rank by ⟨ê, v⟩ with ê the unit final embedding (not the raw dot product,
    not centred). Image 0 has the largest raw dot product but image 1 the largest cosine."""
    v = torch.eye(3, dtype=torch.float64)
    pca = pclens.HeadPCA(
        "L0H0",
        torch.zeros(3, dtype=torch.float64),
        v,
        torch.ones(3, dtype=torch.float64),
        torch.eye(3, dtype=torch.float64),
        5,
        3.0,
    )
    emb = torch.tensor(
        [[6.0, 8.0, 0.0], [0.9, 0.0, (1 - 0.81) ** 0.5], [-2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.3, -0.4, 0.0]],
        dtype=torch.float64,
    )
    scores = pclens.image_scores(pca, emb)
    assert scores[:, 0].tolist() == pytest.approx([0.6, 0.9, -1.0, 0.0, 0.6])
    top, bottom = pclens.top_images(pca, 0, emb, n=3)
    assert top.tolist()[:1] == [1] and set(top.tolist()[1:]) == {0, 4}
    assert bottom.tolist() == [2, 3, 0] or bottom.tolist() == [2, 3, 4]
    assert pclens.top_images(pca, 2, emb, n=1)[0].tolist() == [3]
    with pytest.raises(IndexError, match="no PC 3"):
        pclens.top_images(pca, 3, emb)


def test_labels_are_displayed_stronger_side_first(tmp_path):
    """The side with the larger |coefficient| is listed first, in the label's
    short form, the QuerySystem table and the report."""
    from hookedclip.methods.pclens.query import QuerySystem as QS
    from hookedclip.report.pclens import head_page

    x = low_rank(0, 30, 4, 2)
    pca = pca_from_data(x, "L0H0", max_pcs=2)
    v = pca.components
    # texts: PC 0's negative side is strong (−0.9), its positive side weak (+0.3); PC 1 the opposite
    pool = torch.stack([-0.9 * v[0] + (1 - 0.81) ** 0.5 * v[1], 0.3 * v[0] + (1 - 0.09) ** 0.5 * v[1]])
    label_pcs(pca, pool, ["water", "land"], 1, center_texts=False)
    first = pca.label_of(0)
    assert first.positive[0][0] == "land" and first.negative[0][0] == "water"
    assert not first.positive_first and pca.label_of(1).positive_first
    assert first.short() == "−[water] +[land]"
    assert first.cells() == ("− water (-0.90)", "+ land (+0.30)")
    result = PCLensResult({"L0H0": pca}, MODEL_ID, texts=["water", "land"])
    row = QS(result).query_vector(v[0], top_k=1).rows()[0]
    assert row[-2:] == ["− water", "+ land"]
    page = head_page(pca, tmp_path / "L0H0", np.zeros((30, 4, 4, 3), np.uint8), x, 0, 2, 1, min_strength=0).read_text()
    assert page.index("− water (-0.90)") < page.index("+ land (+0.30)")
    assert page.index("+ land (+0.95)") < page.index("− water (+0.44)")  # PC 1: positive side stronger


def test_spatial_variant_sums_to_cls_and_spreads_the_mean(model, imgs, fitted):
    chosen = [("L1H0", 0), ("L0H2", 1)]
    sel = pclens_selection._full(fitted, PCSelection.indicator(fitted, chosen))
    cls = apply_to_stack(decompose_image(model, imgs[:4], components=list(fitted.heads)), fitted, sel)
    tok_stack = decompose_image(model, imgs[:4], positions="all", components=list(fitted.heads))
    tok = apply_to_stack(tok_stack, fitted, sel)
    assert torch.allclose(tok.tensor.sum(2), cls.tensor, atol=1e-5)
    T = tok.tensor.shape[2]
    i = tok.labels.index("L1H1")  # no selected PC: μ/T on every token
    assert torch.allclose(tok.tensor[i], (fitted["L1H1"].mean / T).float().expand_as(tok.tensor[i]), atol=1e-6)
    zero = apply_to_stack(tok_stack, fitted, sel, empty_heads="zero")
    assert torch.count_nonzero(zero.tensor[i]) == 0


def test_nearest_neighbours(model, imgs, fitted):
    stack = decompose_image(model, imgs, components=list(fitted.heads))
    head = stack.tensor[stack.labels.index("L1H0")].double()
    idx, scores = pclens.nearest_neighbours(head[3], head, k=5)
    assert int(idx[0]) == int((head @ head[3]).argmax())
    assert bool((scores[1:] <= scores[:-1]).all())
    idx_cos, s_cos = pclens.nearest_neighbours(head[3], head, k=1, score="cos")
    assert int(idx_cos[0]) == 3 and float(s_cos[0]) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# Persistence and model identity
# --------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, model, imgs, fitted):
    fitted.save(tmp_path / "res")
    loaded = PCLensResult.load(tmp_path / "res", model=model)
    assert list(loaded.heads) == list(fitted.heads) and loaded.texts == fitted.texts
    for label in fitted.heads:
        a, b = fitted[label], loaded[label]
        for name in ("mean", "components", "singular_values", "projector", "pos_idx", "pos_coef"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (label, name)
        assert a.label_of(0) == b.label_of(0)
    assert torch.equal(loaded.embedding.components, fitted.embedding.components)
    assert torch.equal(loaded.image_mean, fitted.image_mean)
    e = model.encode_image(imgs)
    with pclens.keep(model, fitted, [("L1H0", 0)]):
        a = model.encode_image(imgs)
    with pclens.keep(model, loaded, [("L1H0", 0)]):
        b = model.encode_image(imgs)
    assert torch.equal(a, b) and not torch.allclose(a, e)


def test_wrong_model_is_refused(tmp_path, fitted):
    other = HookedCLIP.from_open_clip(tiny_open_clip(seed=4, layers=2, embed_dim=24))  # same config, other weights
    with pytest.raises(ValueError, match="computed with .* but the model given is .*weights differ"):
        pclens.keep(other, fitted, [("L1H0", 0)])
    with pytest.raises(ValueError, match="computed with .* but the model given is"):
        QuerySystem(fitted, other)
    fitted.save(tmp_path / "res")
    with pytest.raises(ValueError, match="compute it again"):
        PCLensResult.load(tmp_path / "res", model=other)
    with pytest.raises(FileNotFoundError):
        PCLensResult.load(tmp_path / "nothing")


def test_indicator_covers_the_named_components_and_heads_is_its_old_name(fitted):
    sel = PCSelection.indicator(fitted, [("L1H0", 1)], value=2.0, default=0.5, components=["L0H1", "L1H0"])
    assert list(sel.weights) == ["L0H1", "L1H0"]
    assert sel.weights["L0H1"].tolist() == [0.5] * fitted["L0H1"].k
    assert sel.weights["L1H0"][1] == 2.0 and sel.weights["L1H0"][0] == 0.5
    assert list(PCSelection.indicator(fitted, [("L1H0", 1)]).weights) == list(fitted.heads)  # default: every head
    with pytest.warns(DeprecationWarning, match="use components="):
        old = PCSelection.indicator(fitted, [("L1H0", 1)], value=2.0, default=0.5, heads=["L0H1", "L1H0"])
    assert old.weights.keys() == sel.weights.keys()
    assert all(torch.equal(old.weights[h], sel.weights[h]) for h in sel.weights)


def test_as_selection_accepts_every_form_a_context_takes(fitted):
    pcs = [("L1H0", 0), ("L0H2", 1)]
    from_pcs = pclens.as_selection(fitted, pcs)
    assert sorted(from_pcs.selected()) == sorted(pcs)
    assert pclens.as_selection(fitted, from_pcs) is from_pcs
    weights = {label: w.clone() for label, w in from_pcs.weights.items()}
    assert sorted(pclens.as_selection(fitted, weights).selected()) == sorted(pcs)
    query = QuerySystem(fitted).query_vector(fitted["L1H0"].components[0], top_k=2)
    assert sorted(pclens.as_selection(fitted, query).selected()) == sorted(query.pcs)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(model, imgs, fitted):
    with pytest.raises(KeyError, match="not an analysed head"):
        PCSelection.indicator(fitted, [("L0H9", 0)])
    with pytest.raises(IndexError, match="no PC"):
        PCSelection.indicator(fitted, [("L1H0", 999)])
    with pytest.raises(ValueError, match="cannot parse PC"):
        PCSelection.indicator(fitted, ["L1H0 first"])
    assert PCSelection.indicator(fitted, ["L1H0.PC1", "L1H0:0"]).selected() == [("L1H0", 0), ("L1H0", 1)]
    with pytest.raises(KeyError, match="not an analysed head"):
        PCSelection.indicator(fitted, [], components=["L0H9"])
    with pytest.raises(ValueError, match="k=.*another result"):
        pclens.as_selection(fitted, PCSelection({"L1H0": torch.ones(fitted["L1H0"].k + 1)}))
    with pytest.raises(ValueError, match="weights"):
        pclens.reweight(model, fitted, {"L1H0": torch.ones(fitted["L1H0"].k + 1)})
    with pytest.raises(ValueError, match="d'="):
        fitted.label_with(torch.randn(5, 7), list("abcde"))
    with pytest.raises(ValueError, match="does not exist"):
        pclens.fit(model, imgs.split(16), components=["L5"])
    with pytest.raises(ValueError, match="not heads"):
        pclens.fit(model, imgs.split(16), components=["mlp0"])
    with pytest.raises(ValueError, match="no images"):
        pclens.fit(model, [], components=["L1"])
    with pytest.raises(ValueError, match="at least 2"):
        pca_from_data(torch.randn(1, 4))
    with pytest.raises(ValueError, match="text_embeddings and texts"):
        fit_from_contributions({"L0H0": torch.randn(10, 4)}, MODEL_ID, texts=["a"])
    with pytest.raises(ValueError, match="normalize=True"):
        apply_to_stack(decompose_image(model, imgs[:2], components=["L1H0"], normalize=False), fitted, [("L1H0", 0)])
    with pytest.raises(ValueError, match="d'"):
        QuerySystem(fitted).query_vector(torch.randn(5))


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def test_report_writes_a_page_per_head(tmp_path, model, imgs, fitted):
    import numpy as np

    from hookedclip.report.pclens import write_pclens_report

    pics = np.random.default_rng(0).integers(0, 255, (len(imgs), 16, 16, 3), dtype=np.uint8)
    path = write_pclens_report(fitted, pics, model.encode_image(imgs), tmp_path / "rep", n_pcs=2, n_images=3)
    html = path.read_text()
    labels = list(fitted.heads) + ["embedding"]
    for j, label in enumerate(labels):
        assert f"href='{label}/index.html'" in html
        page = (tmp_path / "rep" / label / "index.html").read_text()
        assert "texts, stronger side (cos)" in page and "href='../index.html'" in page
        links = [f"href='../{other}/index.html'" in page for other in labels]
        assert links == [abs(i - j) == 1 for i in range(len(labels))], label  # previous and next only
        pca = fitted.embedding if label == "embedding" else fitted[label]
        weak = int((pca.strength_rel < 1.0).sum())
        assert (f"the other {weak} (together" in page) == (weak > 0), label
        assert f"rank Π = {int(torch.linalg.matrix_rank(pca.projector))} of k = {pca.k}" in page
        assert (tmp_path / "rep" / label / "pc0.png").exists()
    assert (tmp_path / "rep" / "strengths.png").exists()


def test_row_transform_gives_heat_maps_of_the_selected_pcs(model, imgs, fitted):
    """A selection plugs into segmentation: the per-token rows it passes to ``heatmaps``
    equal the per-token selection formula on a full decomposition, summed over heads."""
    from hookedclip.methods.segmentation import heatmaps, token_contributions
    from hookedclip.zeroshot import ZeroShotClassifier

    sel = pclens_selection._full(fitted, PCSelection.indicator(fitted, [("L1H0", 0), ("L0H2", 1)]))
    heads = list(fitted.heads)
    got, _ = token_contributions(model, imgs[:4], heads, pclens.row_transform(fitted, sel))
    stack = decompose_image(model, imgs[:4], positions="all", components=heads)
    expected = apply_to_stack(stack, fitted, sel).select(heads).tensor.sum(0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    plain, _ = token_contributions(model, imgs[:4], heads)
    assert (got - plain).abs().max() > 1e-3  # the selection changes the rows
    classifier = ZeroShotClassifier(torch.randn(model.cfg.vision.output_dim, 3), ["a", "b", "c"])
    maps = heatmaps(model, imgs[:4], classifier, heads, pclens.row_transform(fitted, sel), target=0)
    assert maps.shape == (4, 16, 16) and float(maps.min()) >= 0 and float(maps.max()) <= 1


# --------------------------------------------------------------------------------------
# Labels a reader can weigh; two image rankings; strengths that never read 0.0%
# --------------------------------------------------------------------------------------


def test_weak_labels_are_marked_low_cosine_or_outside_the_vocabulary():
    from hookedclip.methods.pclens.confidence import LOW_CONFIDENCE_MARK, toy_known_words

    known = toy_known_words()
    assert {"striped", "background", "circle"} <= known and "computer" not in known
    assert pclens.label_text("a striped background", -0.74, 0.2, known) == "a striped background (-0.74)"
    assert pclens.label_text("computer", -0.75, 0.2, known) == f"computer (-0.75) {LOW_CONFIDENCE_MARK}"
    assert pclens.label_text("a black background", 0.17, 0.2, known).endswith(LOW_CONFIDENCE_MARK)
    assert not pclens.low_confidence("computer", 0.75)  # without a vocabulary only the cosine counts
    assert "below 0.2" in pclens.confidence_note(0.2, known) and "vocabulary" in pclens.confidence_note(0.2, known)
    label = pclens.PCLabel([("a cross", 0.86), ("rocket", 0.51)], [("computer", -0.9), ("a heart", -0.1)])
    strong, other = label.cells(threshold=0.2, known_words=known)
    assert strong == f"− computer (-0.90) {LOW_CONFIDENCE_MARK}; a heart (-0.10) {LOW_CONFIDENCE_MARK}"
    assert other == f"+ a cross (+0.86); rocket (+0.51) {LOW_CONFIDENCE_MARK}"
    assert label.cells() == ("− computer (-0.90); a heart (-0.10)", "+ a cross (+0.86); rocket (+0.51)")


def test_strengths_never_read_zero():
    fmt = pclens.format_strength
    assert [fmt(v) for v in (95.71, 12.34, 4.123, 0.153, 0.1, 0.04, 0.0)] == [
        "95.7",
        "12.3",
        "4.12",
        "0.153",
        "0.1",
        "<0.1",
        "<0.1",
    ]
    assert fmt(100.0) == "100"


def test_head_page_marks_weak_labels_and_ranks_images_two_ways(tmp_path):
    """The second ranking (the head's own centred coordinate) is drawn beside the full-embedding
    one, and the page says how far they agree: planted to disagree completely, then to agree."""
    from hookedclip.report.pclens import head_page

    x = low_rank(0, 30, 4, 2)
    pca = pca_from_data(x, "L0H0", max_pcs=2)
    v = pca.components
    pool = torch.stack([0.9 * v[0] + (1 - 0.81) ** 0.5 * v[1], -0.1 * v[0] + (1 - 0.01) ** 0.5 * v[1]])
    label_pcs(pca, pool, ["a circle", "computer"], 1, center_texts=False)
    images = np.zeros((30, 4, 4, 3), np.uint8)
    embeddings = torch.randn(30, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    score = pclens.image_scores(pca, embeddings)[:, 0]
    # contributions whose coordinate along PC 0 is minus the embedding's score: the reverse ranking
    reverse = pca.mean + (-score)[:, None] * v[0]
    page = head_page(
        pca, tmp_path / "rev", images, embeddings, 1, 3, 1, min_strength=0, contributions=reverse, known_words=None
    )
    html = page.read_text()
    assert (tmp_path / "rev" / "pc0.png").exists() and (tmp_path / "rev" / "pc0_head.png").exists()
    assert "share 0 of their 3 top images and 0 of their 3 bottom images" in html and "disagree" in html
    assert "computer (-0.10) ⚠" in html and "a circle (+0.90) ⚠" not in html and "below 0.2" in html
    same = pca.mean + score[:, None] * v[0]
    html = head_page(pca, tmp_path / "same", images, embeddings, 1, 3, 1, min_strength=0, contributions=same)
    assert "share 3 of their 3 top images and 3 of their 3 bottom images." in html.read_text()
    plain = head_page(pca, tmp_path / "one", images, embeddings, 1, 3, 1, min_strength=0).read_text()
    assert "pc0_head.png" not in plain  # without contributions: one ranking
