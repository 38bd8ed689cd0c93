"""The ``hookedclip`` command line. Each job is a subcommand; all run offline."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hookedclip.model.hooked import HookedCLIP


def load_model(spec: str, pretrained: str | None = None, device: str = "cpu") -> HookedCLIP:
    """Resolve a model argument: ``toy``, a directory written by ``HookedCLIP.save``, a local
    Hugging Face model directory (``hf:PATH``), or an open_clip model name."""
    if spec == "toy":
        return HookedCLIP.from_pretrained("toy").to(device)
    if spec.startswith("hf:"):
        import transformers

        return HookedCLIP.from_hf(transformers.AutoModel.from_pretrained(spec[3:]), device=device)
    if Path(spec).is_dir():
        return HookedCLIP.load(spec, device=device)
    return HookedCLIP.from_open_clip(spec, pretrained=pretrained, device=device)


def describe(model: HookedCLIP, all_hooks: bool = False) -> str:
    """A readable summary of the architecture and its hook points."""
    cfg = model.cfg
    lines = [f"{cfg.model_name} (source: {cfg.source}" + (f", pretrained: {cfg.pretrained})" if cfg.pretrained else ")")]
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
    print(describe(load_model(args.model, args.pretrained), all_hooks=args.all_hooks))


def _cmd_demo(args: argparse.Namespace) -> None:
    from hookedclip.report.demo import run_demo

    path = run_demo(args.out, n_images=args.n, seed=args.seed)
    print(f"report written to {path}")


def _cmd_cache(args: argparse.Namespace) -> None:
    from hookedclip.data.extract import run_cache

    run_cache(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hookedclip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="architecture summary and hook points of a model")
    info.add_argument("model", help="toy | open_clip name (ViT-B-16) | saved HookedCLIP dir | hf:LOCAL_DIR")
    info.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file")
    info.add_argument("--all-hooks", action="store_true", help="list every hook point, not one line per pattern")
    info.set_defaults(func=_cmd_info)
    demo = sub.add_parser("demo", help="write the HTML report on the toy model (the main job)")
    demo.add_argument("--out", default="hookedclip-demo", help="report folder (default: ./hookedclip-demo)")
    demo.add_argument("--n", type=int, default=512, help="held-out toy images to analyse")
    demo.add_argument("--seed", type=int, default=2024)
    demo.set_defaults(func=_cmd_demo)
    from hookedclip.data.extract import add_arguments as add_cache_arguments

    cache = sub.add_parser("cache", help="extract activations into a resumable ActivationStore (torchrun-aware)")
    add_cache_arguments(cache)
    cache.set_defaults(func=_cmd_cache)
    from hookedclip.cli.toy import add_toy_commands

    add_toy_commands(sub)
    from hookedclip.report.pclens import add_pclens_commands

    add_pclens_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError, NotImplementedError) as exc:
        print(f"hookedclip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
