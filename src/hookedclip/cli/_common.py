"""What every ``hookedclip`` command shares: one-line errors, help that shows defaults,
one-line warnings, progress lines, and the offline check of pretrained weights.

A command's error is one line on stderr, ``hookedclip CMD: error: PROBLEM; FIX``, with exit
status 2; a bug in hookedclip is one line too (exit status 1), and ``HOOKEDCLIP_TRACEBACK=1``
shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

USER_ERRORS = (ValueError, KeyError, OSError, RuntimeError, NotImplementedError, ImportError)


class CommandError(Exception):
    """A bad argument found by a command itself; the message names the problem and the fix."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option that has a real default (not ``None``, not a
    flag's ``False``) and whose help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line that points to ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(message: object) -> str:
    """A message on one line (library messages may hold newlines or a KeyError's quotes)."""
    return " ".join(str(message).split())


def _message(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return one_line(text) or type(exc).__name__


def command_name(args: argparse.Namespace) -> str:
    """``hookedclip pclens report`` from the parsed subcommands."""
    words = [args.command] + [getattr(args, f"{args.command}_command", None) or ""]
    return " ".join(["hookedclip", *filter(None, words)])


def run_command(func: Callable[[argparse.Namespace], object], args: argparse.Namespace, name: str) -> int:
    """Run a parsed command; every failure becomes one line on stderr and an exit status."""
    debug = os.environ.get("HOOKEDCLIP_TRACEBACK") == "1"
    try:
        with _one_line_warnings(name):
            func(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except CommandError as exc:
        print(f"{name}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"{name}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so in one line, not a traceback
        if debug:
            raise
        print(
            f"{name}: internal error: {type(exc).__name__}: {_message(exc)} (a bug in hookedclip: please report "
            "it with the command line; HOOKEDCLIP_TRACEBACK=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


@contextmanager
def _one_line_warnings(name: str) -> Iterator[None]:
    """Library warnings as ``hookedclip CMD: warning: ...`` lines, without file and source line."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{name}: warning: {one_line(message)}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def warn(name: str, message: str) -> None:
    """One warning line on stderr."""
    print(f"{name}: warning: {one_line(message)}", file=sys.stderr)


@contextmanager
def step(name: str, what: str) -> Iterator[None]:
    """A progress line on stderr before a step and its time after it: ``... (12 s)``."""
    print(f"{name}: {what} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"{name}: {what}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def int_list(text: str, flag: str, minimum: int = 0, what: str = "", example: str = "0,1,2,3") -> list[int]:
    """A comma-separated list of integers >= ``minimum`` (0 or 1) given to ``flag``, or a
    ``CommandError`` naming the flag and an example; ``what``: what the integers count, e.g. ``"PCs per concept"``."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        kind = "positive" if minimum >= 1 else "non-negative"
        what = f"{what} as " if what else ""
        raise CommandError(f"{flag} {text!r}: give {what}comma-separated {kind} integers, e.g. {flag} {example}")
    return values


# ------------------------------------------------------------------------- held-out images
def add_held_out_arguments(
    parser: argparse.ArgumentParser,
    n: int,
    seed: int = 11,
    n_help: str = "held-out toy images",
    n_type: Callable[[str], int] = positive,
) -> None:
    """``--n`` (default ``n``) and ``--seed`` (default ``seed``): the held-out toy images a command
    draws (``n_type=int`` where the command checks ``--n`` itself, with a better message)."""
    parser.add_argument("--n", type=n_type, default=n, help=n_help)
    parser.add_argument("--seed", type=int, default=seed, help="seed of the held-out images")


# ------------------------------------------------------------------------- canonical test sets
def add_canonical_set_arguments(
    parser: argparse.ArgumentParser, seed_flag: str = "--eval-seed", every_set: bool = False
) -> None:
    """``--n`` and ``seed_flag``: evaluate on the first N images of the canonical toy test set
    (the spurious split, or each set with ``every_set``), or on a fresh sample drawn with a seed."""
    if every_set:
        n_help = "images of each canonical test set (default: all 2000; fewer: its first N)"
        seed_help = "draw a fresh test sample with this seed (default: the canonical sets)"
    else:
        n_help = "toy spurious test images (default: the canonical 2000; fewer: the first N)"
        seed_help = "draw a fresh toy spurious test sample (default: the canonical set)"
    parser.add_argument("--n", type=positive, default=None, help=n_help)
    parser.add_argument(seed_flag, type=int, default=None, help=seed_help)


# ------------------------------------------------------------------------- pretrained weights
def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """``--pretrained`` and ``--download``: which weights a command's model loads, and whether
    open_clip may fetch them (every command that loads a model takes both)."""
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file")
    parser.add_argument(
        "--download",
        action="store_true",
        help="let open_clip download pretrained weights missing on this machine (needs network)",
    )


MODEL_HELP = "toy | saved HookedCLIP dir | hf:DIR | open_clip name"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` (default ``toy``) with ``--pretrained`` and ``--download``: the model a command loads
    with :func:`load_command_model`."""
    parser.add_argument("--model", default="toy", help=MODEL_HELP)
    add_weights_arguments(parser)


def load_command_model(args: argparse.Namespace, name: str):
    """The model of :func:`add_model_arguments`' options, after failing at once on weights that
    would need a download; ``name``: the command, for the progress line."""
    from hookedclip.model.resolve import load_model

    check_pretrained_available(args.model, args.pretrained, args.download)
    with step(name, f"loading {args.model}"):
        return load_model(args.model, args.pretrained)


def last_layers(model, count: int) -> list[int]:
    """The image tower's last ``count`` block indices (``--layers``), or a ``CommandError`` naming the range."""
    n = model.cfg.vision.layers
    if not 1 <= count <= n:
        raise CommandError(f"--layers {count}: this model has {n} layers; use --layers 1 to {n}")
    return list(range(n - count, n))


def check_pretrained_available(model: str, pretrained: str | None, download: bool) -> None:
    """Fail at once when open_clip would have to download ``pretrained`` and ``download`` is
    off: the commands run offline, and open_clip's retries take about a minute to fail."""
    if pretrained is None or download or os.path.exists(pretrained) or model == "toy" or Path(model).is_dir():
        return
    if model.startswith("hf:"):
        raise CommandError(
            f"--pretrained {pretrained!r} applies to open_clip names, not to {model!r}; drop it "
            "(an hf: folder holds its own weights)"
        )
    places = pretrained_locations(model, pretrained)
    if places is None or any(Path(p).is_file() for p in places):
        return  # an unknown name or tag: the loader names the known ones
    raise CommandError(
        f"the pretrained weights {model} / {pretrained!r} are not on this machine (looked for "
        f"{', '.join(places)}); add --download to let open_clip fetch them (needs network), or pass a "
        "checkpoint file: --pretrained PATH"
    )


def pretrained_locations(model: str, pretrained: str) -> list[str] | None:
    """The files open_clip would read for a pretrained tag (it prefers the Hugging Face hub cache
    to its own URL cache); ``None`` for a name or tag open_clip does not know."""
    import open_clip
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, get_pretrained_cfg

    cfg = get_pretrained_cfg(model, pretrained) if model in open_clip.list_models() else None
    if not cfg:
        return None
    if not cfg.get("hf_hub"):
        return [os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))]
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    repo, filename = os.path.split(cfg["hf_hub"])
    if filename in ("", HF_WEIGHTS_NAME):
        names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    else:
        names = [filename[:-4] + ".safetensors", filename] if filename.endswith((".bin", ".pth")) else [filename]
    found = [try_to_load_from_cache(repo, name) for name in names]
    return [f for f in found if isinstance(f, str)] or [f"{HF_HUB_CACHE}/models--{repo.replace('/', '--')}"]
