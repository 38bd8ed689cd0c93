"""``hookedclip sae …``: sparse autoencoders on the residual stream.

The group's subcommands live one concern a module: training and inspection
(:mod:`~hookedclip.cli.sae_train`), the latent gallery (:mod:`~hookedclip.cli.sae_gallery`) and
attribution (:mod:`~hookedclip.cli.sae_attribution`); this module only gathers them.
"""

from __future__ import annotations

import argparse


def add_sae_commands(subparsers) -> argparse.ArgumentParser:
    from hookedclip.cli import sae_attribution, sae_gallery, sae_train

    group = subparsers.add_parser("sae", help="sparse autoencoders: train, inspect, label and attribute")
    sub = group.add_subparsers(dest="sae_command", required=True)
    for module in (sae_train, sae_gallery, sae_attribution):
        module.add_commands(sub)
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return group
