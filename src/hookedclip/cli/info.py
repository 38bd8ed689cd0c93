"""``hookedclip info``: a model's architecture and hook points."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from hookedclip.cli._common import add_weights_arguments, check_pretrained_available
from hookedclip.model.hooked import HookedCLIP
from hookedclip.model.resolve import load_model


def describe(model: HookedCLIP, all_hooks: bool = False) -> str:
    """A readable summary of the architecture and its hook points."""
    cfg = model.cfg
    pretrained = f", pretrained: {cfg.pretrained})" if cfg.pretrained else ")"
    lines = [f"{cfg.model_name} (source: {cfg.source}" + pretrained]
    n_params = sum(p.numel() for p in model.parameters())
    lines.append(f"parameters: {n_params / 1e6:.1f} M, dtype {model.dtype}, device {model.device}")
    v = cfg.vision
    lines.append(
        f"visual: {v.layers} layers, d_model {v.width}, {v.heads} heads x d_head {v.d_head}, d_mlp {v.d_mlp}, "
        f"{v.act_fn}; image {v.image_size} px, patch {v.patch_size}, {v.n_tokens} tokens; "
        f"pool {v.pool_type}{' (ln_post after pool)' if v.final_ln_after_pool else ''}; "
        f"ln_pre {'yes' if v.ln_pre else 'no'}; d_out {v.output_dim}"
    )
    if cfg.text is not None:
        t = cfg.text
        lines.append(
            f"text: {t.layers} layers, d_model {t.width}, {t.heads} heads x d_head {t.d_head}, d_mlp {t.d_mlp}, "
            f"{t.act_fn}; context {t.context_length}, vocab {t.vocab_size}; pool {t.pool_type}; d_out {t.output_dim}"
        )
    else:
        lines.append("text: none (vision-only model)")
    names = model.hook_points()
    lines.append(f"\nhook points ({len(names)}):")
    lines += [f"  {n}" for n in (names if all_hooks else _hook_patterns(names))]
    return "\n".join(lines)


def _hook_patterns(names: Sequence[str]) -> list[str]:
    """Collapse per-layer names into one ``blocks.{l}`` line each, keeping forward order."""
    seen: dict[str, None] = {}
    for name in names:
        seen[re.sub(r"blocks\.\d+\.", "blocks.{l}.", name)] = None
    return list(seen)


def _cmd_info(args: argparse.Namespace) -> None:
    check_pretrained_available(args.model, args.pretrained, args.download)
    print(describe(load_model(args.model, args.pretrained), all_hooks=args.all_hooks))


def add_info_command(subparsers) -> argparse.ArgumentParser:
    """Register ``hookedclip info`` on the ``hookedclip`` command's subparsers."""
    info = subparsers.add_parser("info", help="architecture summary and hook points of a model")
    info.add_argument("model", help="toy | open_clip name (ViT-B-16) | saved HookedCLIP dir | hf:LOCAL_DIR")
    add_weights_arguments(info)
    info.add_argument("--all-hooks", action="store_true", help="list every hook point, not one line per pattern")
    info.set_defaults(func=_cmd_info)
    return info
