"""TextSpan (hookedclip.methods.textspan): the reference procedure, its invariants (orthogonal
directions, a projection), and the moment path choosing what the data path chooses.

Pure maths on synthetic data; no model is loaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hookedclip.data.stats import RunningMoments
from hookedclip.methods.textspan import (
    TextSpanResult,
    text_span,
    text_span_from_moments,
)

SETTINGS = settings(deadline=None, max_examples=25, derandomize=True)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def reference_port(C: np.ndarray, R: np.ndarray, m: int, rank: int | None):
    """The reference procedure, step by step, on the data matrix (NumPy, float64).

    Returns the chosen indices, the final Ĉ, and (1/N)‖Ĉ_i − c̄‖²_F after every step.
    """
    C = np.array(C, dtype=np.float64)
    R = np.array(R, dtype=np.float64)
    if rank is not None:
        _, _, vh = np.linalg.svd(C, full_matrices=False)
        vr = vh[:rank]
        R = R @ vr.T @ np.linalg.inv(vr @ vr.T) @ vr
    mean = C.mean(axis=0, keepdims=True)
    C = C - mean
    rec = np.repeat(mean, C.shape[0], axis=0)
    chosen, explained = [], []
    for _ in range(m):
        s = (C @ R.T).std(axis=0, ddof=1)
        j = int(np.argmax(s))
        r = R[j]
        rho = r @ r
        b = C @ r / rho
        rec = rec + np.outer(b, r)
        C = C - np.outer(b, r)
        R = R - np.outer(R @ r / rho, r)
        chosen.append(j)
        explained.append(((rec - mean) ** 2).sum() / C.shape[0])
    return chosen, rec, np.array(explained)


def planted(seed: int, n: int, d: int, pool: int, k: int, noise: float = 0.05, offset: float = 1.0):
    """Data with ``k`` planted orthonormal pool directions (distinct, decreasing scales) + noise.

    Returns ``(C [n, d], R [pool, d] unit rows, planted_indices)``. The coefficient columns
    are centred and mutually orthogonal, so the sample variance along ``p_i`` is exactly
    ``scale_i²`` (before noise).
    """
    rng = np.random.default_rng(seed)
    p, _ = np.linalg.qr(rng.standard_normal((d, k)))
    p = p.T  # [k, d] orthonormal
    coeff = rng.standard_normal((n, k))
    coeff -= coeff.mean(0)
    coeff, _ = np.linalg.qr(coeff)  # orthonormal, still centred
    scales = 3.0 * 0.6 ** np.arange(k)
    C = (coeff * np.sqrt(n) * scales) @ p + noise * rng.standard_normal((n, d))
    C += offset * rng.standard_normal(d)
    R = rng.standard_normal((pool, d))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    where = rng.choice(pool, size=k, replace=False)
    R[where] = p
    return C, R, [int(w) for w in where]


def names(m: int) -> list[str]:
    return [f"text {i}" for i in range(m)]


def t64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


@st.composite
def problems(draw, *, with_rank: bool = True):
    d = draw(st.integers(4, 10))
    n = draw(st.integers(d + 2, 40))
    k = draw(st.integers(1, 3))
    pool = draw(st.integers(k + 3, 18))
    seed = draw(st.integers(0, 2**31 - 1))
    C, R, where = planted(seed, n, d, pool, k, noise=draw(st.sampled_from([0.01, 0.1, 0.5])))
    rank = draw(st.one_of(st.none(), st.integers(k + 1, d + 3))) if with_rank else None
    limit = d if rank is None else min(rank, d)
    m = draw(st.integers(1, min(limit, pool)))
    return C, R, where, rank, m


# --------------------------------------------------------------------------------------
# Orthogonality, residual, no repeats
# --------------------------------------------------------------------------------------


@SETTINGS
@given(problems(), st.sampled_from(["unnormalized_std", "variance_gain"]))
def test_orthogonal_directions_and_residual(problem, criterion):
    C, R, _, rank, m = problem
    res = text_span(t64(C), t64(R), names(len(R)), n_texts=m, rank=rank, criterion=criterion)
    assert len(res) == m
    idx = res.indices.tolist()
    assert len(set(idx)) == len(idx), "a pool index was chosen twice"
    dirs = res.directions
    unit = dirs / dirs.norm(dim=1, keepdim=True)
    cos = unit @ unit.T - torch.eye(m, dtype=unit.dtype)
    assert cos.abs().max() < 1e-6
    resid = t64(C) - res.reconstruction
    # Final residual ⟂ every chosen direction (relative to the size of the data).
    assert (resid @ unit.T).abs().max() < 1e-9 * max(1.0, float(t64(C).abs().max()))


def test_no_repeat_even_when_data_is_exhausted():
    """All variance along text 0: after it, every score is 0 (and text 0's row is 0).

    The literal reference would take argmax = 0 again (and divide by ρ = 0); we move on
    to the first unused text instead.
    """
    rng = np.random.default_rng(0)
    d = 5
    C = np.outer(rng.standard_normal(30), np.eye(d)[0]) + rng.standard_normal(d)
    res = text_span(t64(C), t64(np.eye(d)), names(d), n_texts=4, rank=None)
    assert res.indices.tolist() == [0, 1, 2, 3]
    assert torch.isfinite(res.basis).all()
    assert float(res.explained_fraction[-1]) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# TextSpan is a projection
# --------------------------------------------------------------------------------------


@SETTINGS
@given(problems())
def test_reconstruction_is_projection(problem):
    C, R, _, rank, m = problem
    res = text_span(t64(C), t64(R), names(len(R)), n_texts=m, rank=rank)
    Q = res.basis
    assert torch.allclose(Q @ Q.T, torch.eye(m, dtype=Q.dtype), atol=1e-10)
    Ct = t64(C)
    cbar = Ct.mean(0)
    assert torch.allclose(res.mean, cbar, atol=1e-12)
    expected = cbar + (Ct - cbar) @ Q.T @ Q
    assert torch.allclose(res.reconstruction, expected, atol=1e-6)
    assert torch.allclose(res.reconstruct(Ct), expected, atol=1e-10)
    # Explained variance: (1/N)‖Ĉ − c̄‖²_F, non-decreasing in m, ≤ total.
    ev = res.explained_variance
    assert ev[-1] == pytest.approx(float(((expected - cbar) ** 2).sum()) / len(C), rel=1e-9, abs=1e-12)
    assert bool((ev[1:] >= ev[:-1] - 1e-12).all())
    total = float(((Ct - cbar) ** 2).sum()) / len(C)
    assert res.total_variance == pytest.approx(total, rel=1e-12)
    assert float(ev[-1]) <= total * (1 + 1e-12)
    assert bool(((res.explained_fraction >= 0) & (res.explained_fraction <= 1 + 1e-12)).all())


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(2, 5), st.integers(6, 9))
def test_full_rank_pool_gives_projection_on_span(seed, r, d):
    """Pool spanning span(V_r) and m = r: Ĉ = c̄ + (C − c̄) V_rᵀ V_r."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((25, d)) * np.linspace(3, 0.5, d) + rng.standard_normal(d)
    R = rng.standard_normal((r + 4, d))
    res = text_span(t64(C), t64(R), names(len(R)), n_texts=r, rank=r)
    _, _, vh = np.linalg.svd(C, full_matrices=False)
    vr = vh[:r]
    cbar = C.mean(0)
    expected = cbar + (C - cbar) @ vr.T @ vr
    np.testing.assert_allclose(res.reconstruction.numpy(), expected, atol=1e-8)
    np.testing.assert_allclose(res.span.T.numpy() @ res.span.numpy(), vr.T @ vr, atol=1e-10)


# --------------------------------------------------------------------------------------
# Agreement with the literal reference loop
# --------------------------------------------------------------------------------------


@SETTINGS
@given(problems())
def test_matches_numpy_port_of_reference(problem):
    C, R, _, rank, m = problem
    ref_idx, ref_rec, ref_ev = reference_port(C, R, m, rank)
    res = text_span(t64(C), t64(R), names(len(R)), n_texts=m, rank=rank)
    assert res.indices.tolist() == ref_idx
    assert res.texts == [f"text {i}" for i in ref_idx]
    np.testing.assert_allclose(res.reconstruction.numpy(), ref_rec, atol=1e-8)
    np.testing.assert_allclose(res.reconstruct(t64(C)).numpy(), ref_rec, atol=1e-8)
    np.testing.assert_allclose(res.explained_variance.numpy(), ref_ev, rtol=1e-8, atol=1e-10)


def test_matches_reference_with_unnormalised_pool_and_ties():
    """Duplicate texts tie exactly: the first index wins, as with argmax in the reference."""
    C, R, _ = planted(7, 30, 6, 8, 2)
    R = np.concatenate([R, R[:3] * 2.0, R[:3]])  # exact duplicates at the end
    ref_idx, ref_rec, _ = reference_port(C, R, 4, None)
    res = text_span(t64(C), t64(R), names(len(R)), n_texts=4, rank=None)
    assert res.indices.tolist() == ref_idx
    np.testing.assert_allclose(res.reconstruction.numpy(), ref_rec, atol=1e-8)


# --------------------------------------------------------------------------------------
# Streaming moments
# --------------------------------------------------------------------------------------


@SETTINGS
@given(problems(), st.sampled_from(["unnormalized_std", "variance_gain"]), st.booleans())
def test_moments_choose_same_texts(problem, criterion, center_texts):
    C, R, _, rank, m = problem
    kw = dict(n_texts=m, rank=rank, criterion=criterion, center_texts=center_texts)
    a = text_span(t64(C), t64(R), names(len(R)), **kw)
    x = t64(C)
    b = text_span_from_moments(x.mean(0), x.T @ x / len(x), len(x), t64(R), names(len(R)), **kw)
    assert b.indices.tolist() == a.indices.tolist()
    assert b.texts == a.texts
    np.testing.assert_allclose(b.basis.numpy(), a.basis.numpy(), atol=1e-8)
    np.testing.assert_allclose(b.directions.numpy(), a.directions.numpy(), atol=1e-8)
    np.testing.assert_allclose(b.explained_variance.numpy(), a.explained_variance.numpy(), rtol=1e-7, atol=1e-10)
    assert b.total_variance == pytest.approx(a.total_variance, rel=1e-9)
    np.testing.assert_allclose(b.reconstruct(t64(C)).numpy(), a.reconstruction.numpy(), atol=1e-8)
    assert b.reconstruction is None


# --------------------------------------------------------------------------------------
# Planted structure, criteria, variants
# --------------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from([None, 80, 4]))
def test_planted_directions_are_found_first(seed, rank):
    C, R, where = planted(seed, n=60, d=16, pool=30, k=3, noise=0.01)
    n_texts = 4 if rank == 4 else 6
    res = text_span(torch.from_numpy(C).float(), torch.from_numpy(R).float(), names(30), n_texts=n_texts, rank=rank)
    assert set(res.indices[:3].tolist()) == set(where)
    assert float(res.explained_fraction[2]) > 0.95
    assert res.basis.dtype == torch.float32


def _criterion_case():
    """d = 3. e3 carries var 9, e1 var 1, e2 var 1.6; texts e3, e1, (e2 + e3)/√2.

    Both criteria first take e3. Then the residual of text 2 is e2/√2 (norm 0.71):
    unnormalized_std scores it sqrt(1.6)/√2 ≈ 0.89 < 1 (text 1), variance_gain scores
    1.6 > 1, so the second choices differ: the reference's score is not the variance gained.
    """
    rng = np.random.default_rng(0)
    z = rng.standard_normal((40, 3))
    z -= z.mean(0)
    z, _ = np.linalg.qr(z)
    C = z * np.sqrt(39) * np.sqrt([1.0, 1.6, 9.0]) + np.array([0.3, -0.2, 0.1])
    R = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    return C, R


def test_criteria_can_choose_differently():
    C, R = _criterion_case()
    std = text_span(t64(C), t64(R), names(3), n_texts=2, rank=None, criterion="unnormalized_std")
    gain = text_span(t64(C), t64(R), names(3), n_texts=2, rank=None, criterion="variance_gain")
    assert std.indices.tolist() == [0, 1]
    assert gain.indices.tolist() == [0, 2]
    assert std.scores[1] == pytest.approx(1.0, rel=1e-9)  # beats sqrt(1.6)/√2 ≈ 0.89 of text 2
    assert gain.scores[1] == pytest.approx(1.6, rel=1e-9)  # beats 1.0 of text 1
    # variance_gain is the true greedy: its second step explains more variance.
    assert float(gain.explained_variance[1]) > float(std.explained_variance[1])
    assert reference_port(C, R, 2, None)[0] == std.indices.tolist()


def test_center_texts_is_invariant_to_a_common_text_offset():
    C, R, _ = planted(11, 40, 8, 12, 2)
    shift = np.random.default_rng(1).standard_normal(8)
    a = text_span(t64(C), t64(R), names(12), n_texts=4, rank=6, center_texts=True)
    b = text_span(t64(C), t64(R + shift), names(12), n_texts=4, rank=6, center_texts=True)
    c = text_span(t64(C), t64(R - R.mean(0)), names(12), n_texts=4, rank=6, center_texts=False)
    assert a.indices.tolist() == b.indices.tolist() == c.indices.tolist()
    np.testing.assert_allclose(a.basis.numpy(), c.basis.numpy(), atol=1e-10)


def test_span_from_centred_uses_covariance_pcs():
    C, R, _ = planted(5, 40, 6, 10, 2, offset=5.0)
    res = text_span(t64(C), t64(R), names(10), n_texts=2, rank=3, span_from="centred")
    _, _, vh = np.linalg.svd(C - C.mean(0), full_matrices=False)
    np.testing.assert_allclose(res.span.T.numpy() @ res.span.numpy(), vh[:3].T @ vh[:3], atol=1e-10)
    mom = RunningMoments.empty((), C.shape[1])
    for chunk in np.array_split(C, 3):  # the streaming statistics of hookedclip.data.stats
        mom.update(t64(chunk))
    b = text_span_from_moments(
        mom.mean, mom.second_moment(), mom.n, t64(R), names(10), n_texts=2, rank=3, span_from="centred"
    )
    assert b.indices.tolist() == res.indices.tolist()


def test_stops_early_when_span_is_exhausted():
    C, R, _ = planted(2, 30, 6, 10, 2)
    with pytest.warns(RuntimeWarning, match="stopped after 3 of 5"):
        res = text_span(t64(C), t64(R), names(10), n_texts=5, rank=3)
    assert len(res) == 3 and res.basis.shape == (3, 6)
    assert res.explained_fraction.shape == (3,)


def test_dtypes_and_new_data_reconstruction():
    C, R, _ = planted(4, 30, 6, 10, 2)
    r32 = text_span(torch.from_numpy(C).float(), torch.from_numpy(R).float(), names(10), n_texts=3)
    r64 = text_span(t64(C), t64(R).float(), names(10), n_texts=3)
    assert r32.basis.dtype == r32.mean.dtype == r32.explained_variance.dtype == torch.float32
    assert r64.basis.dtype == r64.reconstruction.dtype == torch.float64
    assert r32.indices.dtype == torch.long
    new = torch.randn(2, 4, 6, dtype=torch.float64)
    out = r64.reconstruct(new)
    assert out.shape == new.shape
    q = r64.basis
    torch.testing.assert_close(out - r64.mean, (new - r64.mean) @ q.T @ q)


def test_zero_texts_gives_the_mean():
    C, R, _ = planted(4, 30, 6, 10, 2)
    res = text_span(t64(C), t64(R), names(10), n_texts=0)
    assert len(res) == 0 and res.basis.shape == (0, 6)
    torch.testing.assert_close(res.reconstruct(t64(C)), t64(C).mean(0).expand(30, 6))


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_errors():
    C = torch.randn(10, 6, dtype=torch.float64)
    R = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="larger than the text pool"):
        text_span(C, R, names(4), n_texts=5)
    with pytest.raises(ValueError, match=r"\(10, 6\).*\(4, 5\)"):
        text_span(C, R[:, :5], names(4), n_texts=2)
    with pytest.raises(ValueError, match="empty"):
        text_span(C[:0], R, names(4), n_texts=2)
    with pytest.raises(ValueError, match="at least 2"):
        text_span(C[:1], R, names(4), n_texts=2)
    with pytest.raises(ValueError, match="one text per row"):
        text_span(C, R, names(3), n_texts=2)
    with pytest.raises(ValueError, match="criterion"):
        text_span(C, R, names(4), n_texts=2, criterion="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank"):
        text_span(C, R, names(4), n_texts=2, rank=0)
    with pytest.raises(ValueError, match="NaN"):
        text_span(C * float("nan"), R, names(4), n_texts=2)
    mean, m2 = C.mean(0), C.T @ C / 10
    with pytest.raises(ValueError, match=r"\(6, 5\).*\(6,\)"):
        text_span_from_moments(mean, m2[:, :5], 10, R, names(4), n_texts=2)
    with pytest.raises(ValueError, match=r"\(6,\).*\(4, 5\)"):
        text_span_from_moments(mean, m2, 10, R[:, :5], names(4), n_texts=2)
    with pytest.raises(ValueError, match="empty"):
        text_span_from_moments(mean, m2, 0, R, names(4), n_texts=2)
    with pytest.raises(ValueError, match="larger than the text pool"):
        text_span_from_moments(mean, m2, 10, R, names(4), n_texts=9)
    with pytest.raises(ValueError, match=r"\(3, 5\).*\(1, 6\)"):
        text_span(C, R, names(4), n_texts=1).reconstruct(torch.randn(3, 5))


def test_result_type():
    C, R, _ = planted(4, 30, 6, 10, 2)
    assert isinstance(text_span(t64(C), t64(R), names(10), n_texts=1), TextSpanResult)


def test_text_span_heads_streams_and_matches_the_data_path():
    """On a model: streaming moments over two batches choose what the data matrix chooses."""
    from tests.conftest import tiny_open_clip

    from hookedclip import HookedCLIP
    from hookedclip.decompose import decompose_image
    from hookedclip.methods.textspan import text_span_heads
    from hookedclip.zeroshot import embed_texts

    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=4, vocab_size=49408)).double()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(12, 3, 16, 16, generator=gen, dtype=torch.float64) for _ in range(2)]
    pool = ["a dog", "a cat", "a red car", "a tree", "the sea", "a house", "music", "a bird", "snow", "a road"]
    results = text_span_heads(model, batches, pool, components=["L1H0", "L1H3"], n_texts=3, rank=None)
    assert set(results) == {"L1H0", "L1H3"}
    rows = decompose_image(model, torch.cat(batches), components=["L1H3"]).tensor[0]
    direct = text_span(rows, embed_texts(model, pool).double(), pool, n_texts=3, rank=None)
    assert results["L1H3"].texts == direct.texts
    with pytest.raises(ValueError, match="empty"):
        text_span_heads(model, batches, [], components=["L1H0"])

    def never_read():  # a pool too small must be refused before the pass over the images
        raise AssertionError("text_span_heads read an image batch before checking n_texts")
        yield

    with pytest.raises(ValueError, match=r"n_texts=11.*10 texts"):
        text_span_heads(model, never_read(), pool, components=["L1H0"], n_texts=11)


def test_text_span_heads_takes_precomputed_text_embeddings():
    """``text_embeddings=`` (precomputed) gives what embedding ``texts`` with the model gives,
    and a pool that does not match its texts is refused before any image is read."""
    from tests.conftest import tiny_open_clip

    from hookedclip import HookedCLIP
    from hookedclip.methods.textspan import text_span_heads
    from hookedclip.zeroshot import embed_texts

    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=4, vocab_size=49408)).double()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(20, 3, 16, 16, generator=gen, dtype=torch.float64)
    labels = torch.zeros(20, dtype=torch.long)
    pool = ["a dog", "a cat", "a red car", "a tree", "the sea", "a house", "music", "a bird"]
    embedded = text_span_heads(model, images.split(10), pool, components="L1", n_texts=3, rank=None)
    given = text_span_heads(
        model,
        list(zip(images.split(10), labels.split(10))),
        pool,
        components="L1",
        n_texts=3,
        rank=None,
        text_embeddings=embed_texts(model, pool),
    )
    assert list(given) == list(embedded) == [f"L1H{h}" for h in range(4)]
    for label, result in embedded.items():
        assert given[label].texts == result.texts
        torch.testing.assert_close(given[label].basis, result.basis, rtol=0, atol=1e-12)

    def never_read():
        raise AssertionError("read an image batch before checking the text pool")
        yield

    with pytest.raises(ValueError, match=r"8 texts but text_embeddings of shape \(5, "):
        text_span_heads(
            model, never_read(), pool, components="L1", n_texts=2, text_embeddings=embed_texts(model, pool[:5])
        )


def test_toy_last_layer_heads_have_shape_and_colour_roles():
    """Planted structure: on the shipped toy CLIP (1,024 held-out images, last layer, 3 texts)
    TextSpan measured L3H0 = colour ("a blue shape", "a purple shape", ...) and L3H2 = shape
    ("a heart", "a triangle", 84% of variance). The test asks for the roles, not the names:
    some head starts with two shape texts and some head with two colour texts."""
    from hookedclip import HookedCLIP
    from hookedclip.data.vocab import toy_text_pool
    from hookedclip.methods.textspan import text_span_heads
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.world import ATTRIBUTE_WORDS, ToyWorld

    model = HookedCLIP.from_pretrained("toy")
    world = ToyWorld(1024, seed=11, split="test")
    batches = [images_to_tensor(world.images(range(i, i + 256))) for i in range(0, 1024, 256)]
    results = text_span_heads(model, batches, toy_text_pool(), components=["L3"], n_texts=3, rank=None)
    shapes = {f"a {w}" for w in ATTRIBUTE_WORDS["shape"].values()}
    colours = {f"a {w} shape" for w in ATTRIBUTE_WORDS["color"].values()}
    roles = {label: r.texts[:2] for label, r in results.items()}
    assert any(set(t) <= shapes for t in roles.values()), roles
    assert any(set(t) <= colours for t in roles.values()), roles


def test_example_prints_each_heads_top_texts(capsys):
    """Smoke test of examples/textspan.py on a few toy images."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "textspan.py"
    spec = importlib.util.spec_from_file_location("textspan_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--n", "48", "--layers", "1", "--texts", "2"])
    lines = capsys.readouterr().out.splitlines()
    headers = [line for line in lines if line.startswith("L")]
    from hookedclip import HookedCLIP

    cfg = HookedCLIP.from_pretrained("toy").cfg.vision
    assert [h.split()[0] for h in headers] == [f"L{cfg.layers - 1}H{h}" for h in range(cfg.heads)]
    assert sum("cumulative" in line for line in lines) == 2 * cfg.heads
