"""The ``hookedclip`` command line. Each job is a subcommand; all run offline.

One module per command group (``info``, ``demo``, ``cache``, ``pclens``, ``sith``, ``toy``, ``sae``, ``llava``), each with an
``add_*_command(s)`` that registers its subparser; this module only dispatches. Errors are one
line on stderr with exit status 2 (``_common.run_command``).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence

from hookedclip.cli._common import Parser, command_name, run_command


def build_parser() -> argparse.ArgumentParser:
    # imported here, not at the top: ``python -m hookedclip.cli.cache`` must find its module unloaded
    from hookedclip.cli.cache import add_cache_command
    from hookedclip.cli.demo import add_demo_command
    from hookedclip.cli.info import add_info_command
    from hookedclip.cli.llava import add_llava_commands
    from hookedclip.cli.pclens import add_pclens_commands
    from hookedclip.cli.sae import add_sae_commands
    from hookedclip.cli.sith import add_sith_commands
    from hookedclip.cli.toy import add_toy_commands

    parser = Parser(prog="hookedclip", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_info_command(sub)
    add_demo_command(sub)
    add_cache_command(sub)
    add_toy_commands(sub)
    add_pclens_commands(sub)
    add_sae_commands(sub)
    add_sith_commands(sub)
    add_llava_commands(sub)
    sub.metavar = "{" + ",".join(sub.choices) + "}"  # a missing command is then named by its choices
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``hookedclip`` console script: parse, run, and return the exit status (2 for a bad
    argument or input, with one line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # argparse: --help (0) or a bad argument (2, one line already printed)
        return done.code if isinstance(done.code, int) else 2
    return run_command(args.func, args, command_name(args))


def __getattr__(name: str):
    if name == "load_model":  # moved to the core: library code loads models without the command line
        warnings.warn(
            "hookedclip.cli.load_model is deprecated: use hookedclip.model.load_model", DeprecationWarning, stacklevel=2
        )
        from hookedclip.model.resolve import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
