"""The documentation runs as written: every ```python block of README.md and docs/*.md, and
every example's ``--help``.

Each file's blocks run in order in one namespace (a block may use what an earlier block of the
same file defined), in a temporary working directory. A block preceded by
``<!-- skip-test: REASON -->`` is not run: only for code that needs real checkpoints or data
sets that are not shipped.
"""

from __future__ import annotations

import ast
import re
import runpy
import sys
import warnings
from pathlib import Path

import matplotlib
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
SKIP = re.compile(r"<!--\s*skip-test:\s*(.*?)\s*-->\s*$")
INTERNAL = ("specs/", "pclens_textspan", "§", "Appendix", "DESIGN")


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` for every ```python block of a Markdown file."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(1) != "python":
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        blocks.append((text.count("\n", 0, match.start()) + 2, match.group(2), skip.group(1) if skip else None))
    return blocks


def _params():
    for path in DOCS:
        yield pytest.param(path, id=path.relative_to(ROOT).as_posix())


@pytest.mark.parametrize("path", list(_params()))
def test_python_blocks_run_as_written(path: Path, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOOKEDCLIP_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for line, code, skip in python_blocks(path):
        if skip is not None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a block's own warnings are not failures of the docs
            exec(compile(code, f"{path.relative_to(ROOT)}, block at line {line}", "exec"), namespace)  # noqa: S102


def test_skipped_blocks_are_few_and_say_why():
    skipped = [(p.name, line, reason) for p in DOCS for line, _, reason in python_blocks(p) if reason is not None]
    assert all(len(reason) > 15 for _, _, reason in skipped), skipped
    assert len(skipped) <= 4, skipped
    assert sum(len(python_blocks(p)) for p in DOCS) >= 15  # the test above really sees the blocks


def test_extractor_reads_fences_and_skip_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- skip-test: needs a real checkpoint file -->\n"
        "```python\nraise SystemExit\n```\n\n```bash\nls\n```\n"
    )
    assert python_blocks(page) == [(4, "x = 1\n", None), (9, "raise SystemExit\n", "needs a real checkpoint file")]


@pytest.mark.parametrize("path", [*DOCS, *EXAMPLES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_internal_references(path: Path):
    """Users never see the project's internal specification: the docs say things in their own words."""
    text = path.read_text()
    assert not [word for word in INTERNAL if word in text]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_help_is_whole_and_shows_defaults(path: Path, monkeypatch, capsys):
    """``python examples/X.py --help`` prints the module's whole description (not its first line,
    cut mid-sentence) and the default of every option that has one."""
    import argparse

    parsers = []
    original = argparse.ArgumentParser.parse_args

    def record(self, *args, **kwargs):
        parsers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", record)
    monkeypatch.setattr(sys, "argv", [path.name, "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(path), run_name="__main__")
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=True)
    assert " ".join(doc.split("\n\n")[0].split()) in text, "the description is cut"
    (parser,) = parsers
    for action in parser._actions:
        if action.default in (None, False, argparse.SUPPRESS) or action.help is argparse.SUPPRESS:
            continue
        assert "default" in (action.help or ""), f"{action.dest} does not show its default {action.default!r}"
