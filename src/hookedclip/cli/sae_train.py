"""``hookedclip sae`` subcommands (to be written)."""

from __future__ import annotations


def add_commands(sub) -> None:
    """Register this module's subcommands on the ``sae`` group's subparsers."""
