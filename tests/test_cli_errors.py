"""Every ``hookedclip`` command answers a bad argument with one line on stderr that names the
problem and the fix, and exit status 2: never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hookedclip.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
# a step line of a long command (``hookedclip pclens report: loading toy ...``, ``...: done in 3 s``)
PROGRESS = re.compile(r"^hookedclip [\w ]+: .*(\.\.\.|: done in \d+ s)$")


def assert_one_error_line(err: str, command: str, *phrases: str) -> str:
    """stderr holds exactly one error line (after any progress lines) naming ``phrases``."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not PROGRESS.match(line)]
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith(f"{command}: error: "), line
    for phrase in phrases:
        assert phrase in line, (phrase, line)
    return line


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache: no pretrained weights are on this machine."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


BAD = {
    # argument parsing: argparse's message on one line, pointing to --help
    "no command": ([], "hookedclip", ["required: {info,demo,cache,toy,pclens", "--help"]),
    "unknown command": (["nosuch"], "hookedclip", ["invalid choice: 'nosuch'", "--help"]),
    "info without model": (["info"], "hookedclip info", ["required: model"]),
    "demo --n abc": (["demo", "--n", "abc"], "hookedclip demo", ["--n", "invalid int value: 'abc'"]),
    "cache without --out": (["cache"], "hookedclip cache", ["--out"]),
    "cache --batch-size 0": (
        ["cache", "--batch-size", "0", "--out", "x"],
        "hookedclip cache",
        ["--batch-size", "not a positive integer"],
    ),
    "pclens without subcommand": (["pclens"], "hookedclip pclens", ["required: {report,debias}"]),
    "toy train --steps 0": (["toy", "train", "--steps", "0"], "hookedclip toy train", ["--steps"]),
    "toy evaluate --n 0": (["toy", "evaluate", "--n", "0"], "hookedclip toy evaluate", ["--n", "positive"]),
    "pclens report --images -1": (["pclens", "report", "--images", "-1"], "hookedclip pclens report", ["--images"]),
    "sae gallery without --out": (["sae", "gallery", "--sae", "x"], "hookedclip sae gallery", ["--out"]),
    "sae gallery --top 0": (
        ["sae", "gallery", "--sae", "x", "--top", "0", "--out", "x"],
        "hookedclip sae gallery",
        ["--top", "not a positive integer"],
    ),
    # found by the commands themselves
    "sae gallery missing autoencoder": (
        ["sae", "gallery", "--sae", "no-such-sae", "--out", "x"],
        "hookedclip sae gallery",
        ["no-such-sae", "sae.json not found", "TopKSAE.save"],
    ),
    "sae gallery --keep below --n": (
        ["sae", "gallery", "--sae", "x", "--n", "20", "--keep", "10", "--out", "x"],
        "hookedclip sae gallery",
        ["--keep 10", "--n 20"],
    ),
    "info hf: missing folder": (
        ["info", "hf:./missing-folder"],
        "hookedclip info",
        ["./missing-folder", "no Hugging Face model folder", "local folder"],
    ),
    "info unknown model": (["info", "ViT-B-99"], "hookedclip info", ["unknown open_clip model", "ViT-B-32"]),
    "demo --n 5": (["demo", "--n", "5"], "hookedclip demo", ["--n 5", "at least 64", "--n 64"]),
    "cache --data toy:abc": (
        ["cache", "--data", "toy:abc", "--out", "x"],
        "hookedclip cache",
        ["toy:abc", "positive integer", "toy:1024"],
    ),
    "cache --data waterbirds:": (
        ["cache", "--data", "waterbirds:", "--out", "x"],
        "hookedclip cache",
        ["waterbirds:PATH"],
    ),
    "pclens report --data": (
        ["pclens", "report", "--data", "imagenet"],
        "hookedclip pclens report",
        ["--data 'imagenet'", "--data toy"],
    ),
    "pclens debias --ks": (
        ["pclens", "debias", "--ks", "1,two"],
        "hookedclip pclens debias",
        ["--ks '1,two'", "comma-separated positive integers"],
    ),
    "llava without subcommand": (["llava"], "hookedclip llava", ["required: {decompose,ablate}"]),
    "llava ablate --layers": (
        ["llava", "ablate", "--layers", "1,x"],
        "hookedclip llava ablate",
        ["--layers '1,x'", "comma-separated non-negative integers"],
    ),
    "llava ablate --kinds": (
        ["llava", "ablate", "--kinds", "heads"],
        "hookedclip llava ablate",
        ["--kinds", "attn,mlp"],
    ),
    "llava ablate --model": (
        ["llava", "ablate", "--model", "ViT-B-32"],
        "hookedclip llava ablate",
        ["ViT-B-32", "--model toy", "ablation_effects"],
    ),
    "llava ablate --layers 9": (
        ["llava", "ablate", "--layers", "0,9"],
        "hookedclip llava ablate",
        ["--layers 0,9", "4 layers", "0..4"],
    ),
    "llava decompose --model": (
        ["llava", "decompose", "--model", "ViT-B-32"],
        "hookedclip llava decompose",
        ["'toy' or hf:DIR"],
    ),
    "llava decompose hf: missing": (
        ["llava", "decompose", "--model", "hf:./missing-folder"],
        "hookedclip llava decompose",
        ["./missing-folder", "no Hugging Face model folder"],
    ),
    "llava decompose --layer 9": (
        ["llava", "decompose", "--layer", "9", "--n", "4"],
        "hookedclip llava decompose",
        ["--layer 9", "4 layers", "--layer -5 to 4"],
    ),
    "sae train without --store": (["sae", "train", "--out", "x"], "hookedclip sae train", ["--store"]),
    "sae train --k 0": (
        ["sae", "train", "--store", "s", "--out", "x", "--k", "0"],
        "hookedclip sae train",
        ["--k", "not a positive integer"],
    ),
    "sae train --lr -1": (
        ["sae", "train", "--store", "s", "--out", "x", "--lr", "-1"],
        "hookedclip sae train",
        ["--lr", "not a positive number"],
    ),
    "sae train --k above --latents": (
        ["sae", "train", "--store", "s", "--out", "x", "--latents", "8", "--k", "9"],
        "hookedclip sae train",
        ["k = 9", "d_sae = 8", "1 <= k <= d_sae"],
    ),
    "sae train missing store": (
        ["sae", "train", "--store", "no-such-store", "--out", "x"],
        "hookedclip sae train",
        ["no-such-store", "hookedclip cache"],
    ),
    "sae info missing folder": (
        ["sae", "info", "no-such-sae"],
        "hookedclip sae info",
        ["no-such-sae", "TopKSAE.save"],
    ),
    "sae attribute without --sae": (["sae", "attribute"], "hookedclip sae attribute", ["--sae"]),
    "sae attribute --sae missing": (
        ["sae", "attribute", "--sae", "missing-sae"],
        "hookedclip sae attribute",
        ["--sae missing-sae", "TopKSAE.save"],
    ),
    "sae faithfulness --data": (
        ["sae", "faithfulness", "--sae", "x", "--data", "imagenet"],
        "hookedclip sae faithfulness",
        ["--data 'imagenet'", "--data toy"],
    ),
    "sae faithfulness --steps 0": (
        ["sae", "faithfulness", "--sae", "x", "--steps", "0"],
        "hookedclip sae faithfulness",
        ["--steps", "positive"],
    ),
    "sae reliance without --labels": (
        ["sae", "reliance", "--sae", "x"],
        "hookedclip sae reliance",
        ["--labels is required", "one label per latent"],
    ),
    "toy evaluate --weights": (
        ["toy", "evaluate", "--weights", "no-such-run"],
        "hookedclip toy evaluate",
        ["no-such-run", "toy train"],
    ),
    "sith without subcommand": (["sith"], "hookedclip sith", ["required: {decompose,report,edit}"]),
    "sith decompose --k 0": (["sith", "decompose", "--k", "0"], "hookedclip sith decompose", ["--k", "positive"]),
    "sith decompose --method": (
        ["sith", "decompose", "--method", "omp"],
        "hookedclip sith decompose",
        ["--method", "invalid choice: 'omp'"],
    ),
    "sith decompose --sides": (
        ["sith", "decompose", "--sides", "up"],
        "hookedclip sith decompose",
        ["--sides 'up'", "right,left"],
    ),
    "sith decompose --layers 9": (
        ["sith", "decompose", "--layers", "9"],
        "hookedclip sith decompose",
        ["--layers 9", "4 layers", "--layers 1 to 4"],
    ),
    "sith decompose --k larger than the dictionary": (
        ["sith", "decompose", "--k", "1000"],
        "hookedclip sith decompose",
        ["k must be an integer in 1..68", "dictionary's size"],
    ),
    "sith decompose --dictionary missing": (
        ["sith", "decompose", "--dictionary", "no-such-concepts.txt"],
        "hookedclip sith decompose",
        ["no-such-concepts.txt", "not a built-in vocabulary", "one concept per line"],
    ),
    "sith decompose --image-mean": (
        ["sith", "decompose", "--layers", "1", "--image-mean", "no-such-folder"],
        "hookedclip sith decompose",
        ["--image-mean 'no-such-folder'", "toy, none, or a folder"],
    ),
    "sith report --from": (
        ["sith", "report", "--from", "."],
        "hookedclip sith report",
        ["--from .", "sith decompose"],
    ),
    "sith edit --vector": (
        ["sith", "edit", "--vector", "L3H1"],
        "hookedclip sith edit",
        ["--vector 'L3H1'", "L3H1:0"],
    ),
    "sith edit --vector out of range": (
        ["sith", "edit", "--vector", "L3H1:99", "--n", "8"],
        "hookedclip sith edit",
        ["99", "out of range 0..31"],
    ),
    "sith edit --concept": (
        ["sith", "edit", "--concept", "a unicorn"],
        "hookedclip sith edit",
        ["'a unicorn' is not in this dictionary"],
    ),
}


@pytest.mark.parametrize("argv, command, phrases", list(BAD.values()), ids=list(BAD))
def test_bad_argument_is_one_line_and_exit_2(argv, command, phrases, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, command, *phrases)


def test_cache_unknown_target_is_named_before_any_image_is_read(tmp_path, capsys):
    assert main(["cache", "--targets", "heads", "bogus", "--out", str(tmp_path / "store")]) == 2
    line = assert_one_error_line(
        capsys.readouterr().err,
        "hookedclip cache",
        "--targets 'bogus'",
        "heads, heads/tokens, components, embedding",
        "hookedclip info toy",
    )
    assert "closest hook points" not in line  # nothing close to "bogus"
    assert not (tmp_path / "store").exists()
    assert main(["cache", "--targets", "visual.blocks.3.hook_resid_pots", "--out", str(tmp_path / "s")]) == 2
    assert "closest hook points: visual.blocks.3.hook_resid_post" in capsys.readouterr().err


def test_cache_missing_folder(tmp_path, capsys):
    assert main(["cache", "--data", str(tmp_path / "my_photos"), "--out", str(tmp_path / "store")]) == 2
    assert_one_error_line(capsys.readouterr().err, "hookedclip cache", "my_photos", "not found", "folder of images")


def test_layers_beyond_the_model_name_the_range(capsys):
    """Found after the model is loaded: progress lines may come first, then one error line."""
    assert main(["pclens", "report", "--layers", "9", "--n", "8"]) == 2
    assert_one_error_line(
        capsys.readouterr().err, "hookedclip pclens report", "--layers 9", "4 layers", "--layers 1 to 4"
    )


@pytest.mark.parametrize(
    "argv, command",
    [
        (["info", "ViT-B-32", "--pretrained", "openai"], "hookedclip info"),
        (["cache", "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k", "--out", "x"], "hookedclip cache"),
        (["pclens", "debias", "--model", "ViT-B-32", "--pretrained", "openai"], "hookedclip pclens debias"),
    ],
    ids=["info", "cache", "pclens debias"],
)
def test_pretrained_weights_missing_offline_fail_at_once(argv, command, no_hub_cache, capsys, tmp_path, monkeypatch):
    """No download is tried (open_clip's retries took about a minute offline): the message names
    where the weights were looked for, ``--download`` and a checkpoint file."""
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 15
    line = assert_one_error_line(
        capsys.readouterr().err, command, "ViT-B-32", "not on this machine", "--download", "--pretrained PATH"
    )
    assert str(no_hub_cache) in line


def test_pretrained_weights_in_the_cache_are_found(no_hub_cache):
    """The check reads open_clip's own cache layout: a cached file is found, so nothing fails early."""
    from hookedclip.cli._common import check_pretrained_available, pretrained_locations

    repo = "timm/vit_base_patch32_clip_224.openai"
    snapshot = no_hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    refs = no_hub_cache / f"models--{repo.replace('/', '--')}" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    assert pretrained_locations("ViT-B-32", "openai") == [str(snapshot / "open_clip_model.safetensors")]
    check_pretrained_available("ViT-B-32", "openai", download=False)  # does not raise
    assert pretrained_locations("ViT-B-99", "openai") is None  # unknown: the loader's message names the known ones


def test_an_unexpected_exception_is_one_line_too(monkeypatch, capsys):
    """A bug in hookedclip: one line saying so (exit status 1); HOOKEDCLIP_TRACEBACK=1 shows it."""

    def broken(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr("hookedclip.cli.info._cmd_info", broken)
    assert main(["info", "toy"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("hookedclip info: internal error: TypeError: unsupported operand (a bug in hookedclip")
    monkeypatch.setenv("HOOKEDCLIP_TRACEBACK", "1")
    with pytest.raises(TypeError):
        main(["info", "toy"])


def test_library_warnings_are_one_line(monkeypatch, capsys):
    import warnings

    def warns(args):
        warnings.warn("3 images could not be read\nsee store.skipped", UserWarning, stacklevel=2)

    monkeypatch.setattr("hookedclip.cli.info._cmd_info", warns)
    assert main(["info", "toy"]) == 0
    assert capsys.readouterr().err == "hookedclip info: warning: 3 images could not be read see store.skipped\n"


def test_toy_model_on_photographs_warns(tmp_path, capsys):
    """``hookedclip cache --data my_photos`` with the default toy model says the model does not fit."""
    from PIL import Image

    photos = tmp_path / "my_photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(photos / f"{i}.jpg")
    assert main(["cache", "--data", str(photos), "--targets", "embedding", "--out", str(tmp_path / "store")]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning:" in line]
    assert len(warning) == 1 and warning[0].startswith("hookedclip cache: warning: the toy model was trained on 32 px")
    assert "--model ViT-B-16" in warning[0]


def test_large_images_for_a_small_model_warn(tmp_path, capsys, monkeypatch, tiny_model_32):
    from PIL import Image

    photos = tmp_path / "big"
    photos.mkdir()
    Image.new("RGB", (1024, 768)).save(photos / "a.png")
    monkeypatch.setattr("hookedclip.cli.cache.load_model", lambda spec, pretrained=None, device="cpu": tiny_model_32)
    assert (
        main(
            [
                "cache",
                "--model",
                "tiny",
                "--data",
                str(photos),
                "--targets",
                "embedding",
                "--out",
                str(tmp_path / "store"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "hookedclip cache: warning: the first image of" in err and "1024x768 px" in err and "32 px input" in err


@pytest.fixture
def tiny_model_32():
    """The toy model under another name: a 32 px model that is not the toy one."""
    from hookedclip import HookedCLIP

    model = HookedCLIP.from_pretrained("toy")
    model.cfg.source = "open_clip"
    return model


def test_help_shows_defaults(capsys):
    assert main(["pclens", "report", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "held-out images (default: 1024)" in text and "report folder (default: pclens-report)" in text
    assert "(default: None)" not in text
    assert main(["cache", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "images per forward pass (default: 64)" in text and "--download" in text


def test_real_process_exit_status_and_stderr(tmp_path):
    """The installed console script's path, in a real process: exit status 2, one line, no traceback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "hookedclip.cli", "cache", "--targets", "bogus", "--out", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert_one_error_line(done.stderr, "hookedclip cache", "--targets 'bogus'")


def test_pclens_report_shows_its_steps(tmp_path, capsys):
    """A long command says what it is doing: a line before each step and its time after it."""
    assert (
        main(
            [
                "pclens",
                "report",
                "--n",
                "32",
                "--layers",
                "1",
                "--pcs",
                "1",
                "--images",
                "2",
                "--out",
                str(tmp_path / "rep"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if PROGRESS.match(line)]
    for what in (
        "loading toy",
        "rendering 32 held-out toy images",
        "fitting PCLens on the heads L3-3",
        "embedding the images",
        "writing a page per head",
    ):
        assert any(s.startswith(f"hookedclip pclens report: {what}") and s.endswith(" ...") for s in steps), what
        assert any(
            s.startswith(f"hookedclip pclens report: {what}") and re.search(r"done in \d+ s$", s) for s in steps
        ), what
    assert "head pages" in err  # the per-head progress bar of the longest step


@pytest.fixture(scope="module")
def toy_cls_store(tmp_path_factory):
    """A 16-image toy store of the last layer's class-token residual."""
    from hookedclip import HookedCLIP
    from hookedclip.data import toy_dataset
    from hookedclip.data.extract import extract

    model = HookedCLIP.from_pretrained("toy")
    path = tmp_path_factory.mktemp("store")
    extract(model, toy_dataset(16), [f"visual.blocks.{model.cfg.n_layers - 1}.hook_resid_post@0"], path)
    return model, path


def test_sae_gallery_refuses_a_store_of_another_width(toy_cls_store, tmp_path, capsys):
    from hookedclip.methods import sae as S

    _, store = toy_cls_store
    S.TopKSAE(S.SAEConfig(16, 32, 4, layer=-1, token="cls")).save(tmp_path / "sae")
    argv = ["sae", "gallery", "--sae", str(tmp_path / "sae"), "--store", str(store), "--out", str(tmp_path / "g")]
    assert main(argv) == 2
    assert_one_error_line(
        capsys.readouterr().err, "hookedclip sae gallery", "width", "16", "another model or hook point"
    )


def test_sae_gallery_refuses_an_autoencoder_of_another_model(toy_cls_store, tmp_path, capsys):
    from tests.conftest import tiny_open_clip

    from hookedclip import HookedCLIP
    from hookedclip.methods import sae as S

    model, store = toy_cls_store
    other = HookedCLIP.from_open_clip(tiny_open_clip(seed=3, width=model.cfg.d_model))
    S.TopKSAE(S.SAEConfig(model.cfg.d_model, 32, 4, layer=-1), model=other).save(tmp_path / "sae")
    argv = ["sae", "gallery", "--sae", str(tmp_path / "sae"), "--store", str(store), "--out", str(tmp_path / "g")]
    assert main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, "hookedclip sae gallery", "this autoencoder", "toy")


@pytest.mark.parametrize("module", ["hookedclip", "hookedclip.cli"])
def test_python_dash_m_runs_the_command(module):
    done = subprocess.run([sys.executable, "-m", module, "toy"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("hookedclip toy: error: "), done.stderr
    assert "Traceback" not in done.stderr
