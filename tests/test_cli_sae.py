"""``hookedclip sae train`` and ``hookedclip sae info``, in one process and under torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hookedclip.cli import main
from hookedclip.methods import sae as S

SRC = Path(__file__).resolve().parents[1] / "src"
TARGET = "visual.blocks.3.hook_resid_post@0"
ARGS = ["--target", TARGET, "--latents", "64", "--k", "4", "--steps", "12", "--batch", "16", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from hookedclip import HookedCLIP
    from hookedclip.data import toy_dataset
    from hookedclip.data.extract import extract

    torch.set_num_threads(1)
    model = HookedCLIP.from_pretrained("toy").eval()
    path = tmp_path_factory.mktemp("store")
    extract(model, toy_dataset(96), [TARGET], path, batch_size=48, rows_per_shard=48, progress=False)
    return path


def test_train_writes_an_autoencoder_and_info_describes_it(store, tmp_path, capsys):
    out = tmp_path / "sae"
    assert main(["sae", "train", "--store", str(store), "--out", str(out), *ARGS, "--checkpoint-every", "5"]) == 0
    sae = S.TopKSAE.load(out)
    assert sae.cfg == S.SAEConfig(128, 64, 4, layer=3, token="cls")
    direct, _ = S.train(store, TARGET, S.TrainConfig(d_sae=64, k=4, steps=12, batch_size=16, lr=1e-3, progress=False))
    assert torch.equal(sae.W_dec, direct.W_dec)
    capsys.readouterr()
    assert main(["sae", "info", str(out)]) == 0
    text = capsys.readouterr().out
    for phrase in ("d_sae=64", "k=4", "after block 3, token cls", "toy", "atom norms: min 1.0", "training: 12 steps"):
        assert phrase in text, (phrase, text)
    # an existing run is continued only when asked
    assert main(["sae", "train", "--store", str(store), "--out", str(out), *ARGS]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["sae", "train", "--store", str(store), "--out", str(out), *ARGS, "--resume"]) == 0


def test_info_of_the_shipped_toy_autoencoder(capsys):
    assert main(["sae", "info", "toy"]) == 0
    assert "d_sae=256, k=8" in capsys.readouterr().out


def test_fast_mode_departs_from_the_recipe(store, tmp_path):
    args = ["--target", TARGET, "--latents", "64", "--k", "4", "--steps", "64", "--fast", "--batch", "64"]
    assert main(["sae", "train", "--store", str(store), "--out", str(tmp_path), *args]) == 0
    log = S.TrainLog.load(tmp_path / "train_log.json")
    assert log.config["batch_size"] == 64 and log.config["lr"] == 1e-3 and log.step[-1] == 64 * 32 // 64


def test_torchrun_two_processes_equal_one_process(store, tmp_path):
    with socket.socket() as s:  # a port free now (the launcher binds it a moment later)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    cmd += ["-m", "hookedclip.cli", "sae", "train", "--store", str(store), "--out", str(tmp_path / "two"), *ARGS]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["sae", "train", "--store", str(store), "--out", str(tmp_path / "one"), *ARGS]) == 0
    two, one = S.TopKSAE.load(tmp_path / "two"), S.TopKSAE.load(tmp_path / "one")
    for name, tensor in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
