"""``hookedclip sith decompose``, ``hookedclip sith report`` and ``hookedclip sith edit``.

``decompose`` explains every singular vector of the heads of the last ``--layers`` layers with
a concept dictionary (:func:`hookedclip.methods.sith.decompose`) and writes one saved
``SithResult`` and one CSV per layer. ``report`` writes the HTML report
(:func:`hookedclip.report.sith.write_sith_report`) from a ``decompose`` folder or from scratch.
``edit`` scales the vectors whose top concept is a spurious one (or the vectors named with
``--vector``) and reports worst-group accuracy before and after on the toy spurious split
(``--waterbirds DIR`` for Waterbirds), optionally saving the edited model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip.cli._common import (
    CommandError,
    add_canonical_set_arguments,
    add_model_arguments,
    last_layers,
    load_command_model,
    positive,
    step,
)
from hookedclip.methods.sith.decompose import check_arguments

DECOMPOSE, REPORT, EDIT = "hookedclip sith decompose", "hookedclip sith report", "hookedclip sith edit"


def _parse_sides(text: str) -> list[str]:
    sides = [s.strip() for s in text.split(",") if s.strip()]
    if not sides or any(s not in ("right", "left") for s in sides) or len(set(sides)) != len(sides):
        raise CommandError(f"--sides {text!r}: give right, left or right,left")
    return sides


def _image_mean(model, spec: str, name: str):
    """``--image-mean``: ``toy`` (512 held-out toy images), ``none``, or a folder of images."""
    from hookedclip.methods import sith

    if spec == "none":
        return None
    if spec == "toy":
        from hookedclip.toy.model import images_to_tensor
        from hookedclip.toy.world import ToyWorld

        world = ToyWorld(512, seed=11, split="test", image_size=model.cfg.vision.image_size)
        x = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
        with step(name, "the image mean of 512 held-out toy images"):
            return sith.image_mean(model, x.split(256))
    from hookedclip.data.datasets import ImageFolder

    if not Path(spec).is_dir():
        raise CommandError(f"--image-mean {spec!r}: give toy, none, or a folder of images")
    if model.preprocess is None:
        raise CommandError(f"--image-mean {spec}: this model has no image preprocessing; use --image-mean none")
    loader = torch.utils.data.DataLoader(ImageFolder(spec, transform=model.preprocess), batch_size=64)
    with step(name, f"the image mean of the images in {spec}"):
        return sith.image_mean(model, (batch["image"] for batch in loader))


def _decompose(args: argparse.Namespace, name: str) -> tuple[object, list]:
    """Load the model, build the dictionary and explain the last ``--layers`` layers."""
    from hookedclip.methods import sith

    sides = _parse_sides(args.sides)
    torch.set_num_threads(max(1, args.threads))
    model = load_command_model(args, name)
    layers = last_layers(model, args.layers)
    source = _or_toy_default(args, "--dictionary")
    with step(name, f"embedding the dictionary {source}"):
        dictionary = sith.dictionary(model, source)
    for layer in layers:  # every check before any work
        check_arguments(model, layer, dictionary, args.k, args.method, sides, args.lam)
    for concept in getattr(args, "concept", None) or []:
        dictionary.index(concept)  # a concept to edit by must be one the vectors can be explained with
    mean = _image_mean(model, _or_toy_default(args, "--image-mean"), name)
    results = []
    for layer in layers:
        with step(name, f"layer {layer}: {args.method} (k={args.k}) over {len(dictionary)} concepts"):
            results.append(
                sith.decompose(
                    model, layer, dictionary, k=args.k, lam=args.lam, method=args.method, sides=sides, image_mean=mean
                )
            )
    return model, results


def _cmd_decompose(args: argparse.Namespace) -> None:
    _, results = _decompose(args, DECOMPOSE)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.save(out / f"L{r.layer}")
        r.to_csv(out / f"L{r.layer}.csv")
        print(r.summary().splitlines()[0])
    print(f"written: {', '.join(f'L{r.layer}/, L{r.layer}.csv' for r in results)} in {out}")


def _load_results(folder: str, model) -> list:
    from hookedclip.methods.sith import SithResult

    found = sorted(Path(folder).glob("L*/sith.json"), key=lambda p: int(p.parent.name[1:]))
    if not found:
        raise CommandError(
            f"--from {folder}: no SithResult folders (L*/sith.json) there; run `hookedclip sith decompose`"
        )
    return [SithResult.load(p.parent, model=model) for p in found]


def _cmd_report(args: argparse.Namespace) -> None:
    from hookedclip.report.sith import write_sith_report

    if args.source:
        model = load_command_model(args, REPORT)
        results = _load_results(args.source, model)
    else:
        _, results = _decompose(args, REPORT)
    heads = sum(r.n_heads for r in results)
    with step(REPORT, f"writing a page per head ({heads} heads) to {args.out}"):
        path = write_sith_report(results, args.out, n_bars=args.bars)
    print(f"report written to {path}")


def _parse_vector(text: str) -> tuple[str, int]:
    label, _, index = text.partition(":")
    if not label or not index.isdigit():
        raise CommandError(f"--vector {text!r}: give a head and a singular vector index, e.g. --vector L3H1:0")
    return label, int(index)


def _cmd_edit(args: argparse.Namespace) -> None:
    from hookedclip.data.spurious import toy_task, waterbirds_task
    from hookedclip.methods import sith

    vectors = [_parse_vector(v) for v in args.vector or []]
    if vectors and args.concept:
        raise CommandError("give --vector or --concept, not both")
    model, results = (None, []) if vectors else _decompose(args, EDIT)
    if model is None:
        model = load_command_model(args, EDIT)
        sith.edit(model, {v: args.multiplier for v in vectors})  # checks every vector, changes nothing yet
    with step(EDIT, "preparing the evaluation images and the classifier"):
        if args.waterbirds:
            task = waterbirds_task(model, args.waterbirds, args.split, args.limit)
        else:
            task = toy_task(model, args.n, args.eval_seed)
    if not vectors:
        concepts = args.concept or (list(sith.WATERBIRDS_BACKGROUND_WORDS) if args.waterbirds else task.concepts)
        vectors = sith.vectors_by_concept(results, concepts, top=args.top, present_only=not args.concept)
    with step(EDIT, f"evaluating {len(vectors)} vectors scaled by {args.multiplier:g}"):
        found = sith.suppress(model, vectors, task, multiplier=args.multiplier, batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found.to_csv(out / "suppression.csv")
    found.plot(out / "suppression.png")
    (out / "vectors.txt").write_text("\n".join(found.vectors) + "\n")
    (out / "summary.txt").write_text(found.summary() + "\n")
    if args.save_model:
        sith.edited(model, {v: args.multiplier for v in vectors}).save(args.save_model)
    print(found.summary())
    written = ["suppression.csv", "suppression.png", "vectors.txt", "summary.txt"]
    print(
        f"written: {', '.join(written)} in {out}"
        + (f"; the edited model in {args.save_model}" if args.save_model else "")
    )


# Options whose default follows --model: "toy" for the toy model, else this.
_OTHER_MODELS_DEFAULT = {"--dictionary": "english", "--image-mean": "none"}


def _add_toy_default(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    otherwise = _OTHER_MODELS_DEFAULT[flag]
    p.add_argument(flag, default=None, help=f"{what} (default: toy for the toy model, else {otherwise})")


def _or_toy_default(args: argparse.Namespace, flag: str) -> str:
    """The value of ``flag``, or its default for ``--model``."""
    given = getattr(args, flag.lstrip("-").replace("-", "_"))
    return given or ("toy" if args.model == "toy" else _OTHER_MODELS_DEFAULT[flag])


def _add_model_and_dictionary(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--layers", type=positive, default=4, help="explain the heads of the last N layers")
    _add_toy_default(
        p, "--dictionary", "concepts: a file (one per line) or a built-in vocabulary (toy, english, imagenet, ...)"
    )
    p.add_argument("--k", type=positive, default=5, help="concepts per singular vector")
    p.add_argument("--lam", type=float, default=0.3, help="COMP's coherence weight (lasso: its l1 penalty)")
    p.add_argument("--method", default="comp", choices=["comp", "nnomp", "mp", "top_k", "lasso"], help="pursuit")
    p.add_argument("--sides", default="right,left", help="which singular vectors: right (write), left (read)")
    _add_toy_default(p, "--image-mean", "image mean subtracted in the joint space: toy, none, or a folder of images")
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads")


def add_sith_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``hookedclip sith decompose | report | edit`` on the subparsers."""
    group = subparsers.add_parser("sith", help="SITH: each head's singular vectors explained by concepts, and edits")
    sub = group.add_subparsers(dest="sith_command", required=True, metavar="{decompose,report,edit}")

    dec = sub.add_parser("decompose", help="explain every singular vector of the last layers' heads; save and CSV")
    _add_model_and_dictionary(dec)
    dec.add_argument("--out", default="sith", help="output folder (one L<layer>/ result and CSV per layer)")
    dec.set_defaults(func=_cmd_decompose)

    rep = sub.add_parser("report", help="HTML page per head: singular-value bars and each vector's concepts")
    _add_model_and_dictionary(rep)
    rep.add_argument("--from", dest="source", default=None, metavar="DIR", help="a `sith decompose` folder")
    rep.add_argument("--bars", type=positive, default=12, help="singular vectors drawn per head")
    rep.add_argument("--out", default="sith-report", help="report folder")
    rep.set_defaults(func=_cmd_report)

    ed = sub.add_parser("edit", help="scale the vectors of a spurious concept; worst-group accuracy before/after")
    _add_model_and_dictionary(ed)
    ed.add_argument(
        "--concept",
        action="append",
        default=None,
        help="scale the vectors whose top concept is this one (repeat; default: the toy textures' words, "
        "or Waterbirds' background words present in the dictionary)",
    )
    ed.add_argument("--vector", action="append", default=None, help="a vector to scale, e.g. L3H1:0 (repeat)")
    ed.add_argument("--top", type=positive, default=1, help="match among each vector's top N concepts")
    ed.add_argument("--multiplier", type=float, default=0.0, help="factor on the singular values (0 removes)")
    ed.add_argument("--waterbirds", default=None, metavar="DIR", help="Waterbirds folder instead of the toy split")
    ed.add_argument("--split", default="test", help="Waterbirds split")
    ed.add_argument("--limit", type=positive, default=None, help="use only the first N Waterbirds images")
    add_canonical_set_arguments(ed)
    ed.add_argument("--batch-size", type=positive, default=256, help="images per forward pass")
    ed.add_argument("--save-model", default=None, metavar="DIR", help="also save the edited model (weights) here")
    ed.add_argument("--out", default="sith-edit", help="output folder")
    ed.set_defaults(func=_cmd_edit)
    return group
