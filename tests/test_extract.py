"""Extraction into an ActivationStore: values, resume after a crash, skipped images,
two gloo ranks equal one process, and the ``hookedclip cache`` command."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

from hookedclip import HookedCLIP
from hookedclip.data.datasets import ImageFolder, ToyImages
from hookedclip.data.extract import extract, parse_target
from hookedclip.data.store import ActivationStore, StoreError, StoreMismatch, check_shard
from hookedclip.decompose import decompose_image
from hookedclip.toy.world import ToyWorld

TARGETS = ["heads", "embedding", "visual.blocks.1.hook_resid_post@0"]


def toy16(n: int = 21, **kw) -> ToyImages:
    return ToyImages(ToyWorld(n, seed=3, split="test", image_size=16, **kw))


def tiny_hooked() -> HookedCLIP:
    from tests.conftest import tiny_open_clip

    return HookedCLIP.from_open_clip(tiny_open_clip(seed=1))


def store_files(path) -> dict[str, bytes]:
    """Every file that makes up a finished store (shards, moments, manifest), by name."""
    manifest = json.loads((path / "manifest.json").read_text())
    names = [s["file"] for s in manifest["shards"]] + [manifest["moments"], "manifest.json"]
    return {n: (path / n).read_bytes() for n in names}


class Crash(Exception):
    pass


class CrashAt(torch.utils.data.Dataset):
    """A dataset that raises (like a kill) when item ``at`` is read."""

    def __init__(self, base, at: int) -> None:
        self.base, self.at = base, at

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.at:
            raise Crash(f"simulated crash at item {i}")
        return self.base[i]

    def fingerprint(self):  # the same dataset as far as the store is concerned
        return self.base.fingerprint()


def count_reads(monkeypatch) -> list[int]:
    """The indices of every ToyImages item read from now on (the dataset itself is unchanged,
    so its store header is too)."""
    reads, real = [], ToyImages.__getitem__

    def getitem(self, i):
        reads.append(i)
        return real(self, i)

    monkeypatch.setattr(ToyImages, "__getitem__", getitem)
    return reads


def test_rows_are_the_models_values(tmp_path, tiny_model):
    data = toy16(10)
    store = extract(tiny_model, data, TARGETS, tmp_path, batch_size=4, rows_per_shard=4, progress=False)
    assert len(store) == 10 and len(store.shards) == 3
    images = torch.stack([tiny_model.preprocess(_pil(data[i]["image"])) for i in range(10)])
    stack = decompose_image(tiny_model, images, components=["L0-1"])
    torch.testing.assert_close(store.rows("heads"), stack.tensor.movedim(1, 0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(store.rows("embedding"), tiny_model.encode_image(images), rtol=1e-5, atol=1e-6)
    _, cache = tiny_model.run_with_cache(images, names_filter=["visual.blocks.1.hook_resid_post"])
    torch.testing.assert_close(
        store.rows("visual.blocks.1.hook_resid_post@0"),
        cache["visual.blocks.1.hook_resid_post"][:, 0],
        rtol=1e-5,
        atol=1e-6,
    )
    assert store.targets["heads"].labels == stack.labels
    assert store.rows("label").tolist() == [data[i]["label"] for i in range(10)]
    assert store.rows("index").tolist() == list(range(10))


def _pil(array):
    from PIL import Image

    return Image.fromarray(array)


def test_extraction_moments_equal_numpy_on_the_rows(tmp_path, tiny_model):
    store = extract(tiny_model, toy16(), TARGETS, tmp_path, batch_size=4, rows_per_shard=5, progress=False)
    for name in ("heads", "embedding"):
        x = store.rows(name).to(torch.float64).numpy()
        m = store.moments(name)
        np.testing.assert_allclose(m.mean.numpy(), x.mean(0), rtol=1e-10, atol=1e-12)
        xc = x - x.mean(0)
        np.testing.assert_allclose(
            m.covariance().numpy(), np.einsum("n...i,n...j->...ij", xc, xc) / len(x), rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("crash_at", [10, 13], ids=["between-shards", "mid-shard"])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, tiny_model, monkeypatch, crash_at):
    data = toy16()
    kw = dict(batch_size=3, rows_per_shard=5, progress=False)
    extract(tiny_model, data, TARGETS, tmp_path / "whole", **kw)
    with pytest.raises(Crash):
        extract(tiny_model, CrashAt(data, crash_at), TARGETS, tmp_path / "resumed", **kw)
    log = json.loads((tmp_path / "resumed" / "rank000.json").read_text())
    assert len(log["shards"]) == 2 and not (tmp_path / "resumed" / "manifest.json").exists()
    reads = count_reads(monkeypatch)
    extract(tiny_model, data, TARGETS, tmp_path / "resumed", **kw)
    assert reads == list(range(10, 21))  # the two committed shards are not read again
    assert store_files(tmp_path / "resumed") == store_files(tmp_path / "whole")


def fail_atomic_write(monkeypatch, name: str, nth: int, how: str, error: BaseException) -> None:
    """Make the ``nth`` atomic write of the store file ``name`` raise ``error``: with
    ``how="write"`` after half its bytes reached the temporary file (a disk filling up),
    with ``"replace"`` when the complete temporary file is renamed into place."""
    import os
    import tempfile

    real_mkstemp, real_fdopen, real_replace = tempfile.mkstemp, os.fdopen, os.replace
    temporaries: dict[int, str] = {}
    seen = {"n": 0}

    def targeted(final_name: str) -> bool:
        if final_name != name:
            return False
        seen["n"] += 1
        return seen["n"] == nth

    class HalfWrite:
        def __init__(self, f) -> None:
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

        def write(self, data: bytes) -> None:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise error

    def mkstemp(*args, **kwargs):
        fd, tmp = real_mkstemp(*args, **kwargs)
        temporaries[fd] = tmp
        return fd, tmp

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        tmp = temporaries.pop(fd, None)  # atomic_write's temporaries are ".NAME.XXXX.tmp"
        if how == "write" and tmp is not None and targeted(os.path.basename(tmp)[1:].rsplit(".", 2)[0]):
            return HalfWrite(f)
        return f

    def replace(src, dst):
        if how == "replace" and targeted(os.path.basename(dst)):
            raise error
        return real_replace(src, dst)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(
    "name, nth, how, error",
    [
        ("rank000-shard00001.safetensors", 1, "write", OSError(errno.ENOSPC, "No space left on device")),
        ("rank000-shard00001.safetensors", 1, "replace", KeyboardInterrupt()),
        ("rank000-shard00001.safetensors", 1, "write", KeyboardInterrupt()),
        ("rank000-moments1.safetensors", 1, "write", OSError(errno.ENOSPC, "No space left on device")),
        ("rank000.json", 2, "replace", OSError(errno.ENOSPC, "No space left on device")),
    ],
    ids=["shard-disk-full", "shard-interrupt-on-rename", "shard-interrupt", "moments-disk-full", "log-disk-full"],
)
def test_full_disk_or_interrupt_while_committing_leaves_a_resumable_store(
    tmp_path, tiny_model, monkeypatch, name, nth, how, error
):
    data = toy16(12)
    kw = dict(batch_size=4, rows_per_shard=4, progress=False)
    extract(tiny_model, data, TARGETS, tmp_path / "whole", **kw)
    out = tmp_path / "resumed"
    with monkeypatch.context() as patched:
        fail_atomic_write(patched, name, nth, how, error)
        with pytest.raises(type(error)):
            extract(tiny_model, data, TARGETS, out, **kw)
    assert not list(out.glob(".*.tmp"))  # the half-written temporary was removed
    log = json.loads((out / "rank000.json").read_text())
    assert [s["file"] for s in log["shards"]] == ["rank000-shard00000.safetensors"]  # only the first committed
    for entry in log["shards"]:
        check_shard(out, entry)  # sizes and sha256 as recorded
    assert (out / log["moments"]).exists() and not (out / "manifest.json").exists()
    reads = count_reads(monkeypatch)
    extract(tiny_model, data, TARGETS, out, **kw)
    assert reads == list(range(4, 12))
    assert store_files(out) == store_files(tmp_path / "whole")


def test_resume_with_other_model_or_targets_is_refused(tmp_path, tiny_model):
    data = toy16(6)
    with pytest.raises(Crash):
        extract(tiny_model, CrashAt(data, 5), TARGETS, tmp_path, batch_size=2, rows_per_shard=2, progress=False)
    other = tiny_hooked()
    with torch.no_grad():
        other.visual.W_proj.add_(1e-3)
    with pytest.raises(StoreMismatch, match="weights differ"):
        extract(other, data, TARGETS, tmp_path, batch_size=2, rows_per_shard=2, progress=False)
    with pytest.raises(StoreMismatch, match="targets"):
        extract(tiny_model, data, ["embedding"], tmp_path, batch_size=2, rows_per_shard=2, progress=False)
    with pytest.raises(StoreMismatch, match="dataset"):
        extract(tiny_model, toy16(7), TARGETS, tmp_path, batch_size=2, rows_per_shard=2, progress=False)


def test_reading_a_store_with_another_model_is_refused(tmp_path, tiny_model):
    from tests.conftest import tiny_open_clip

    from hookedclip.methods import pclens
    from hookedclip.methods.textspan import text_span_from_store

    store = extract(tiny_model, toy16(8), ["heads", "embedding"], tmp_path, batch_size=4, progress=False)
    d = tiny_model.cfg.vision.output_dim
    pool = torch.nn.functional.normalize(torch.randn(6, d, generator=torch.Generator().manual_seed(0)), dim=1)
    texts = [f"t{i}" for i in range(6)]
    store.check(model=tiny_model, dataset=toy16(8), targets=["heads", "embedding"])  # its own: accepted
    assert text_span_from_store(store, pool, texts, model=tiny_model, n_texts=2)
    assert pclens.fit_from_store(store, model=tiny_model).heads
    retrained = tiny_hooked()
    with torch.no_grad():
        retrained.visual.W_proj.add_(1e-3)
    deeper = HookedCLIP.from_open_clip(tiny_open_clip(seed=1, layers=3))
    for other, differ in ((retrained, "weights differ"), (deeper, "config_hash, weights differ")):
        with pytest.raises(StoreMismatch, match=f"cannot read the store .*{differ}"):
            store.check(model=other)
        with pytest.raises(StoreMismatch, match=differ):
            pclens.fit_from_store(store, model=other)
        with pytest.raises(StoreMismatch, match=differ):
            text_span_from_store(store, pool, texts, model=other)
    with pytest.raises(ValueError, match="text embeddings have dimension 5, the store's 'heads' rows 16"):
        text_span_from_store(store, pool[:, :5], texts)
    with pytest.raises(ValueError, match="dimension 5"):
        pclens.fit_from_store(store, texts=texts, text_embeddings=pool[:, :5])
    with pytest.raises(StoreMismatch, match="dataset"):
        store.check(dataset=toy16(9))
    with pytest.raises(StoreMismatch, match="no target 'heads/tokens'"):
        store.check(targets=["heads/tokens"])


def test_unreadable_images_are_skipped_and_listed(tmp_path, tiny_model):
    from PIL import Image

    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((20, 24, 3), 40 * k, dtype=np.uint8)).save(root / cls / f"{k}.png")
    (root / "dog" / "1.png").write_bytes(b"not a png")
    (root / "cat" / "2.png").write_bytes((root / "cat" / "2.png").read_bytes()[:40])  # truncated
    with pytest.warns(UserWarning, match=r"2 of 6 images could not be read.*store\.skipped.*manifest\.json"):
        store = extract(
            tiny_model,
            ImageFolder(root),
            ["embedding"],
            tmp_path / "store",
            batch_size=2,
            rows_per_shard=4,
            progress=False,
        )
    assert len(store) == 4 and store.manifest["n_skipped"] == 2
    assert sorted(s["id"] for s in store.skipped) == ["cat/2.png", "dog/1.png"]
    assert store.rows("label").tolist() == [0, 0, 1, 1] and store.ids() == [
        "cat/0.png",
        "cat/1.png",
        "dog/0.png",
        "dog/2.png",
    ]


def test_a_shard_of_unreadable_images_stops_the_run(tmp_path, tiny_model):
    root = tmp_path / "images"
    root.mkdir()
    for k in range(4):
        (root / f"{k}.png").write_bytes(b"not a png")
    with pytest.raises(StoreError, match=r"none of the 2 images of dataset indices \[0, 2\).*0\.png.*Unidentified"):
        extract(tiny_model, ImageFolder(root), ["embedding"], tmp_path / "store", rows_per_shard=2, progress=False)


def test_errors_other_than_unreadable_files_propagate(tmp_path, tiny_model, monkeypatch):
    def broken_preprocess(image):
        raise ValueError("a bug in preprocessing")

    monkeypatch.setattr(tiny_model, "preprocess", broken_preprocess)
    with pytest.raises(ValueError, match="a bug in preprocessing"):
        extract(tiny_model, toy16(4), ["embedding"], tmp_path / "a", progress=False)
    monkeypatch.undo()

    class Buggy(CrashAt):
        def __getitem__(self, i):
            raise ValueError(f"a bug in the dataset at {i}")

    with pytest.raises(ValueError, match="a bug in the dataset at 0"):
        extract(tiny_model, Buggy(toy16(4), -1), ["embedding"], tmp_path / "b", progress=False)


def test_labels_and_groups_are_stored(tmp_path, tiny_model):
    from tests.test_datasets import write_waterbirds

    from hookedclip.data.datasets import Waterbirds

    rows = write_waterbirds(tmp_path / "wb")
    data = Waterbirds(tmp_path / "wb", split=None)
    store = extract(tiny_model, data, ["embedding"], tmp_path / "store", batch_size=3, rows_per_shard=5, progress=False)
    assert store.rows("label").tolist() == [y for y, _, _ in rows]
    assert store.rows("group").tolist() == [2 * y + place for y, _, place in rows]  # every group, 0..3
    assert sorted(set(store.rows("group").tolist())) == [0, 1, 2, 3]
    assert store.ids() == data.paths


def test_target_parsing(tiny_model):
    assert parse_target("heads/tokens", tiny_model).positions == "all"
    assert parse_target("decompose:L1H0,mlp1", tiny_model).components == ["L1H0", "mlp1"]
    with pytest.raises(ValueError, match="layers 0..1"):  # refused before any image is read
        parse_target("decompose:L9", tiny_model)
    assert parse_target("visual.blocks.0.hook_mlp_out@3", tiny_model).pos == 3
    with pytest.raises(KeyError, match="hook_resid_post"):
        parse_target("visual.blocks.0.hook_resid_pots", tiny_model)


def test_per_token_decomposition_target_sums_to_the_cls_rows(tmp_path, tiny_model):
    store = extract(tiny_model, toy16(5), ["heads", "heads/tokens"], tmp_path, batch_size=5, progress=False)
    per_token = store.rows("heads/tokens")
    assert per_token.shape[2] == tiny_model.cfg.vision.n_tokens
    torch.testing.assert_close(per_token.sum(2), store.rows("heads"), rtol=1e-5, atol=1e-6)
    assert store.targets["heads/tokens"].moments in ("cov", "mean")


# ---------------------------------------------------------------------------- two ranks
def _rank_extract(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        extract(tiny_hooked(), toy16(24), TARGETS, out, batch_size=4, rows_per_shard=4, progress=False)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "two"
    mp.spawn(_rank_extract, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2, join=True)
    two = ActivationStore(out)
    # 24 rows, 4 per shard and batch: both runs see the same batches, so the same rows
    one = extract(tiny_hooked(), toy16(24), TARGETS, tmp_path / "one", batch_size=4, rows_per_shard=4, progress=False)
    assert {s["rank"] for s in two.shards} == {0, 1} and two.manifest["world_size"] == 2
    assert two.rows("index").tolist() == one.rows("index").tolist() == list(range(24))
    for name in ("heads", "embedding"):
        assert torch.equal(two.rows(name), one.rows(name))
        a, b = two.moments(name), one.moments(name)
        assert a.n == b.n == 24
        torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(a.m2, b.m2, rtol=0, atol=1e-10)
        # and the merged moments are those of the merged rows
        torch.testing.assert_close(two.compute_moments(name).m2, a.m2, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------- command line
def test_cache_command_writes_a_store(tmp_path, monkeypatch, tiny_model):
    import hookedclip.cli as cli

    monkeypatch.setattr("hookedclip.cli.cache.load_model", lambda spec, pretrained=None, device="cpu": tiny_model)
    monkeypatch.setattr("hookedclip.data.datasets.toy_dataset", lambda n=1024, **kw: toy16(n))
    rc = cli.main(
        [
            "cache",
            "--model",
            "toy",
            "--data",
            "toy:6",
            "--targets",
            "embedding",
            "heads",
            "--out",
            str(tmp_path),
            "--batch-size",
            "4",
            "--rows-per-shard",
            "4",
        ]
    )
    assert rc == 0
    store = ActivationStore(tmp_path)
    assert len(store) == 6 and set(store.targets) == {"embedding", "heads"}


def test_torchrun_two_processes_equal_one_process(tmp_path):
    """The real launcher: ``torchrun --nproc-per-node 2 -m hookedclip.cli.cache`` (gloo on CPU)
    writes the same rows and statistics as ``hookedclip cache`` in one process."""
    import os
    import socket
    import subprocess
    import sys

    import hookedclip.cli as cli

    args = [
        "--model",
        "toy",
        "--data",
        "toy:24",
        "--targets",
        "embedding",
        "heads",
        "--batch-size",
        "4",
        "--rows-per-shard",
        "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a port free now (the launcher binds it a moment later)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(port),
        "-m",
        "hookedclip.cli.cache",
        *args,
        "--out",
        str(tmp_path / "two"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cli.main(["cache", *args, "--out", str(tmp_path / "one")]) == 0
    two, one = ActivationStore(tmp_path / "two"), ActivationStore(tmp_path / "one")
    assert two.manifest["world_size"] == 2 and {s["rank"] for s in two.shards} == {0, 1}
    assert sorted(two.rows("index").tolist()) == one.rows("index").tolist() == list(range(24))
    for name in ("heads", "embedding"):
        assert torch.equal(two.rows(name), one.rows(name))  # same batches: the same floats
        a, b = two.moments(name), one.moments(name)
        assert a.n == b.n == 24
        torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(a.covariance(), b.covariance(), rtol=0, atol=1e-10)
