"""``hookedclip sith decompose | report | edit`` on the toy model, end to end, and the SITH HTML
report they write."""

from __future__ import annotations

import torch

from hookedclip import HookedCLIP
from hookedclip.cli import main
from hookedclip.methods import sith


def test_decompose_then_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOOKEDCLIP_CACHE", str(tmp_path / "cache"))
    assert main(["sith", "decompose", "--layers", "2", "--k", "2", "--sides", "right", "--out", "dec"]) == 0
    out = capsys.readouterr().out
    assert "SITH of layer 2" in out and "SITH of layer 3" in out
    result = sith.SithResult.load(tmp_path / "dec" / "L3", model=HookedCLIP.from_pretrained("toy"))
    assert result.sides == ["right"] and result.k == 2 and result.method == "comp"
    assert (tmp_path / "dec" / "L3.csv").read_text().startswith("head,index,singular_value,side,step,concept")
    assert main(["sith", "report", "--from", "dec", "--bars", "4", "--out", "rep"]) == 0
    index = (tmp_path / "rep" / "index.html").read_text()
    assert "<a href='L2H0/index.html'>L2H0</a>" in index and "fidelity_L3.png" in index
    page = (tmp_path / "rep" / "L3H1" / "index.html").read_text()
    assert "right.png" in page and "left.png" not in page
    top = result.explanation(1, 0)[0][0]
    assert top in page and "← L3H0" in page and "L3H2 →" in page
    assert (tmp_path / "rep" / "L3H1" / "right.png").stat().st_size > 0


def test_edit_named_vectors_and_save_the_edited_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["sith", "edit", "--vector", "L3H1:0", "--vector", "L2H0:1", "--n", "40", "--save-model", "edited"]
    assert main(argv) == 0
    assert "SITH suppression of 2 vectors" in capsys.readouterr().out
    assert (tmp_path / "sith-edit" / "vectors.txt").read_text().split() == ["L3H1:0", "L2H0:1"]
    assert len((tmp_path / "sith-edit" / "suppression.csv").read_text().splitlines()) == 5
    toy = HookedCLIP.from_pretrained("toy")
    images = torch.randn(2, 3, toy.cfg.vision.image_size, toy.cfg.vision.image_size)
    saved = HookedCLIP.load(tmp_path / "edited").encode_image(images)
    with sith.edit(toy, {("L3H1", 0): 0.0, ("L2H0", 1): 0.0}):
        hooked = toy.encode_image(images)
    assert torch.allclose(saved, hooked, atol=1e-5)


def test_edit_by_concept_on_the_spurious_split(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOOKEDCLIP_CACHE", str(tmp_path / "cache"))
    assert main(["sith", "edit", "--layers", "3", "--k", "3", "--sides", "right", "--n", "200"]) == 0
    vectors = (tmp_path / "sith-edit" / "vectors.txt").read_text().split()
    assert len(vectors) > 5 and all(v.startswith(("L1", "L2", "L3")) for v in vectors)
    summary = (tmp_path / "sith-edit" / "summary.txt").read_text()
    assert "before: worst group" in summary and "after: worst group" in summary


def test_edit_on_a_waterbirds_folder(tmp_path, monkeypatch, capsys):
    from tests.test_datasets import write_waterbirds

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOOKEDCLIP_CACHE", str(tmp_path / "cache"))
    write_waterbirds(tmp_path / "wb")
    argv = ["sith", "edit", "--waterbirds", "wb", "--layers", "2", "--k", "3", "--sides", "right"]
    assert main([*argv, "--concept", "a striped background"]) == 0
    rows = (tmp_path / "sith-edit" / "suppression.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [
        ["landbird on land", "1"],
        ["landbird on water", "1"],
        ["waterbird on land", "1"],
        ["waterbird on water", "1"],
    ]
    capsys.readouterr()
    # the default concepts are Waterbirds' place words the dictionary holds; no vector of the toy has one on top
    assert main(argv) == 2
    assert "no vectors to suppress" in capsys.readouterr().err
