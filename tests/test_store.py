"""ActivationStore: exact round trip, corruption and mismatch detection, streaming moments."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hookedclip.data.stats import RunningMoments
from hookedclip.data.store import (
    FORMAT,
    ActivationStore,
    CorruptShard,
    RankWriter,
    StoreError,
    StoreMismatch,
    TargetSpec,
    finalize,
    spec_dicts,
)


def header(d: int = 3, dtype: str = "float64", model: str = "m", rows_per_shard: int = 4) -> dict:
    spec = TargetSpec("x", dtype, [d], "cov")
    return {
        "format": FORMAT,
        "model": {"name": model},
        "dataset": {"name": "synthetic"},
        "targets": spec_dicts([spec]),
        "rows_per_shard": rows_per_shard,
        "world_size": 1,
        "params": {},
    }


def write(path, x: torch.Tensor, cuts: list[int], hdr: dict | None = None) -> ActivationStore:
    """Write rows ``x`` as shards cut at ``cuts``, with moments accumulated shard by shard."""
    hdr = hdr or header(x.shape[-1], str(x.dtype).removeprefix("torch."))
    writer = RankWriter(path, hdr)
    acc = {"x": RunningMoments.empty((), x.shape[-1])}
    points = sorted({0, len(x), *[min(c, len(x)) for c in cuts]})
    for a, b in zip(points, points[1:]):
        idx = torch.arange(a, b)
        acc["x"].update(x[a:b])
        rows = {"x": x[a:b], "index": idx, "label": idx % 3, "group": idx % 2}
        writer.commit(a, b, rows, [f"img{i}" for i in range(a, b)], [], acc)
    writer.finish()
    finalize(path)
    return ActivationStore(path)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_bit_identical(tmp_path, dtype):
    x = (torch.randn(23, 5, dtype=torch.float64) * 100).to(dtype)
    store = write(tmp_path, x, [7, 8, 15])
    assert len(store) == 23 and len(store.shards) == 4
    assert store.rows("x").dtype == dtype
    assert torch.equal(
        store.rows("x").view(
            torch.uint8
            if dtype.itemsize == 1
            else torch.int16
            if dtype.itemsize == 2
            else torch.int32
            if dtype.itemsize == 4
            else torch.int64
        ),
        x.view(torch.int16 if dtype.itemsize == 2 else torch.int32 if dtype.itemsize == 4 else torch.int64),
    )
    assert torch.equal(store.rows("x", 5, 17), x[5:17])  # a range across three shards
    assert torch.equal(store[9]["x"], x[9]) and int(store[9]["label"]) == 0 and int(store[-1]["index"]) == 22
    assert store.ids()[:2] == ["img0", "img1"] and len(store.ids()) == 23
    loader = torch.utils.data.DataLoader(store.dataset(["x", "index"]), batch_size=6)
    assert torch.equal(torch.cat([b["x"] for b in loader]), x)


def test_flipped_byte_is_reported_by_shard_name(tmp_path):
    x = torch.randn(12, 3, dtype=torch.float64)
    write(tmp_path, x, [4, 8])
    shard = tmp_path / "rank000-shard00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01  # one bit of one value
    shard.write_bytes(bytes(data))
    store = ActivationStore(tmp_path)  # sizes still match: noticed on first read
    assert torch.equal(store.rows("x", 0, 4), x[:4])  # untouched shard still reads
    with pytest.raises(CorruptShard, match="rank000-shard00001"):
        store.rows("x")
    with pytest.raises(CorruptShard, match="rank000-shard00001"):
        ActivationStore(tmp_path, verify="full")


def test_truncated_shard_is_reported_on_open(tmp_path):
    write(tmp_path, torch.randn(12, 3, dtype=torch.float64), [4, 8])
    shard = tmp_path / "rank000-shard00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CorruptShard, match="rank000-shard00002.*truncated"):
        ActivationStore(tmp_path)


def test_mismatched_header_is_refused_naming_the_difference(tmp_path):
    write(tmp_path, torch.randn(8, 3, dtype=torch.float64), [4])
    with pytest.raises(StoreMismatch, match="extracted from m .*model given is other.*another output directory"):
        RankWriter(tmp_path, header(model="other"))
    with pytest.raises(StoreMismatch, match="targets"):
        RankWriter(tmp_path, header(d=4))
    with pytest.raises(StoreMismatch, match="rows_per_shard"):
        RankWriter(tmp_path, header(rows_per_shard=5))
    assert RankWriter(tmp_path, header()).done  # the same run: nothing to redo


def test_incomplete_store_is_not_read(tmp_path):
    writer = RankWriter(tmp_path, header())
    idx = torch.arange(4)
    writer.commit(
        0,
        4,
        {"x": torch.randn(4, 3, dtype=torch.float64), "index": idx, "label": idx, "group": idx},
        list("abcd"),
        [],
        {"x": RunningMoments.empty((), 3)},
    )
    with pytest.raises(StoreError, match="incomplete.*resume"):
        ActivationStore(tmp_path)
    with pytest.raises(StoreError, match="not finished"):
        finalize(tmp_path)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        ActivationStore(tmp_path / "nowhere")


def test_resumed_writer_skips_committed_shards_and_keeps_moments(tmp_path):
    x = torch.randn(12, 3, dtype=torch.float64)
    writer = RankWriter(tmp_path, header())
    acc = {"x": RunningMoments.of(x[:4])}
    idx = torch.arange(4)
    writer.commit(0, 4, {"x": x[:4], "index": idx, "label": idx, "group": idx}, list("abcd"), [], acc)
    (tmp_path / ".rank000-shard00001.safetensors.abc.tmp").write_bytes(b"half a shard")  # an interrupted write
    again = RankWriter(tmp_path, header())
    assert again.n_done == 1 and not again.done
    assert not list(tmp_path.glob("*.tmp"))
    torch.testing.assert_close(again.moments()["x"].m2, acc["x"].m2, rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 50),
    d=st.integers(1, 5),
    cuts=st.lists(st.integers(0, 50), max_size=5),
    seed=st.integers(0, 2**16),
    offset=st.floats(-1e3, 1e3),
)
def test_store_moments_equal_numpy_for_any_sharding(tmp_path_factory, n, d, cuts, seed, offset):
    x = np.random.default_rng(seed).normal(size=(n, d)) * 3 + offset
    store = write(tmp_path_factory.mktemp("s"), torch.from_numpy(x), cuts)
    want_mean, want_cov = x.mean(0), np.cov(x, rowvar=False, bias=True).reshape(d, d)
    for m in (store.moments("x"), store.compute_moments("x")):
        assert m.n == n
        np.testing.assert_allclose(m.mean.numpy(), want_mean, rtol=0, atol=1e-10 * max(1, abs(offset)))
        np.testing.assert_allclose(m.covariance().numpy(), want_cov, rtol=1e-10, atol=1e-10)


def test_moments_file_corruption_is_detected(tmp_path):
    store = write(tmp_path, torch.randn(8, 3, dtype=torch.float64), [4])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / manifest["moments"]).write_bytes((tmp_path / manifest["moments"]).read_bytes()[:-1] + b"\x00")
    with pytest.raises(CorruptShard, match="moments"):
        store.moments("x")
