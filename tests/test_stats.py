"""Streaming moments equal NumPy on the concatenated data, for any split into shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hookedclip.data.stats import RunningMoments


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 60),
    d=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 60), max_size=5),
    chunk_rows=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    offset=st.floats(-1e3, 1e3),
)
def test_any_split_matches_numpy(n, d, cuts, chunk_rows, seed, offset):
    x = np.random.default_rng(seed).normal(size=(n, d)) * 3 + offset
    points = sorted({min(c, n) for c in cuts} | {0, n})
    shards = [torch.from_numpy(x[a:b]) for a, b in zip(points, points[1:])]
    streamed = RunningMoments.empty((), d)
    chunked = RunningMoments.empty((), d)  # update's own chunking: ``chunk_rows`` rows at a time
    for shard in shards:
        streamed.update(shard)
        chunked.update(shard, chunk_bytes=chunk_rows * d * 8)
    merged = RunningMoments.of(shards[0])
    for shard in shards[1:]:
        merged = merged.merge(RunningMoments.of(shard))
    for m in (streamed, chunked, merged):
        assert m.n == n
        np.testing.assert_allclose(m.mean.numpy(), x.mean(0), rtol=1e-10, atol=1e-10 * max(1, abs(offset)))
        np.testing.assert_allclose(m.covariance().numpy(), np.cov(x.T, bias=True).reshape(d, d), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(m.second_moment().numpy(), x.T @ x / n, rtol=1e-10, atol=1e-8 * max(1, offset**2))


def test_chunked_update_bounds_each_chunk(monkeypatch):
    """``chunk_bytes`` really bounds the rows turned into float64 at once."""
    x = torch.randn(10, 3, dtype=torch.float64)
    sizes, real = [], RunningMoments._add_shifted

    def add(self, chunk, shift, s):
        sizes.append(len(chunk))
        return real(self, chunk, shift, s)

    monkeypatch.setattr(RunningMoments, "_add_shifted", add)
    m = RunningMoments.empty((), 3).update(x, chunk_bytes=4 * 3 * 8)
    assert sizes == [4, 4, 2] and m.n == 10


@pytest.mark.parametrize("chunk_bytes", [1, 2**26])  # one row per matmul, or the whole batch
def test_in_place_update_is_accurate_far_from_the_origin(chunk_bytes):
    """Per-head rows at an offset of 1e3 with scales from 1e-3 to 5 and an empty batch: the
    shifted in-place scatter equals the one-batch moments."""
    gen = torch.Generator().manual_seed(0)
    x = 1e3 + torch.randn(50, 3, 6, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 1e-3, 5.0])[:, None]
    acc = RunningMoments.empty((3,), 6)
    for part in (x[:7], x[7:7], x[7:30], x[30:]):
        acc.update(part, chunk_bytes=chunk_bytes)
    ref = RunningMoments.of(x)
    assert acc.n == 50
    torch.testing.assert_close(acc.mean, ref.mean, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(acc.m2, ref.m2, rtol=1e-9, atol=1e-9 * float(ref.m2[1].abs().max()))
    with pytest.raises(ValueError, match=r"\[n, 3, 6\]"):
        acc.update(x[:, :2])


def test_leading_shape_kept_apart():
    x = torch.randn(50, 3, 2, 4, dtype=torch.float64)
    m = RunningMoments.of(x[:20]).merge(RunningMoments.of(x[20:]))
    assert m.mean.shape == (3, 2, 4) and m.covariance().shape == (3, 2, 4, 4)
    torch.testing.assert_close(m.covariance()[1, 0], torch.from_numpy(np.cov(x[:, 1, 0].numpy().T, bias=True)))


def test_errors_and_state_round_trip():
    m = RunningMoments.of(torch.randn(5, 3))
    with pytest.raises(ValueError, match="cannot merge"):
        m.merge(RunningMoments.of(torch.randn(5, 4)))
    with pytest.raises(ValueError, match="without covariance"):
        RunningMoments.of(torch.randn(5, 3), covariance=False).covariance()
    with pytest.raises(ValueError, match="at least 2 rows"):
        RunningMoments.of(torch.randn(1, 3)).covariance(unbiased=True)
    again = RunningMoments.from_state_dict(m.state_dict())
    assert again.n == 5 and torch.equal(again.mean, m.mean) and torch.equal(again.m2, m.m2)


def _rank_moments(rank: int, world: int, init: str, x: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    rows = x[rank::world]  # a disjoint slice per rank, of unequal sizes
    merged = RunningMoments.of(rows).all_reduce()
    if rank == 0:
        torch.save(merged.state_dict(), out)
    dist.destroy_process_group()


def test_all_reduce_across_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    x = torch.randn(37, 5, dtype=torch.float64) + 4
    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "moments.pt")
    mp.spawn(_rank_moments, args=(2, init, x, out), nprocs=2, join=True)
    merged = RunningMoments.from_state_dict(torch.load(out))
    single = RunningMoments.of(x)
    assert merged.n == 37
    torch.testing.assert_close(merged.mean, single.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.m2, single.m2, rtol=1e-12, atol=1e-10)
