"""``hookedclip pclens report`` and ``hookedclip pclens debias``.

``report`` fits PCLens on held-out toy images and writes the HTML report of
:func:`hookedclip.report.pclens.write_pclens_report`. ``debias`` runs
:func:`hookedclip.methods.pclens.debias.sweep_task` (toy spurious split by default,
``--waterbirds DIR`` for Waterbirds) and writes ``debias.csv``, ``debias.png`` and ``summary.txt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from hookedclip.cli._common import (
    MODEL_HELP,
    CommandError,
    add_canonical_set_arguments,
    add_held_out_arguments,
    add_model_arguments,
    int_list,
    last_layers,
    load_command_model,
    positive,
    step,
)
from hookedclip.methods.pclens import PCLensResult
from hookedclip.methods.pclens.confidence import LOW_COSINE
from hookedclip.model.resolve import load_model
from hookedclip.report.pclens import MIN_STRENGTH, head_contributions, write_pclens_report

REPORT, DEBIAS = "hookedclip pclens report", "hookedclip pclens debias"


def _toy_data(model, n: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.world import ToyWorld

    world = ToyWorld(n, seed=seed, split="test", image_size=model.cfg.vision.image_size)
    images = world.images()
    return images, images_to_tensor(images, model.cfg.image_mean, model.cfg.image_std)


def _analysed_heads(model, layers: int) -> list[str]:
    """The heads of the last ``layers`` layers, e.g. ``["L2-3"]``; a bad count names the range."""
    indices = last_layers(model, layers)
    return [f"L{indices[0]}-{indices[-1]}"]


def _cmd_report(args: argparse.Namespace) -> None:
    from hookedclip.data.vocab import load_vocabulary, toy_text_pool
    from hookedclip.methods import pclens
    from hookedclip.methods.pclens.confidence import toy_known_words
    from hookedclip.zeroshot import embed_images

    if args.data != "toy":
        raise CommandError(
            f"--data {args.data!r}: this command reads only the toy world for now; use --data toy "
            "(for other images, fit with hookedclip.methods.pclens.fit_from_store on a store)"
        )
    torch.set_num_threads(max(1, args.threads))
    with step(REPORT, f"loading {args.model}"):
        model = load_model(args.model)
    components = _analysed_heads(model, args.layers)
    with step(REPORT, f"rendering {args.n} held-out toy images"):
        images, x = _toy_data(model, args.n, args.seed)
    batches = list(x.split(args.batch_size))
    if args.result:
        result = PCLensResult.load(args.result, model=model)
    else:
        texts = load_vocabulary(args.vocab) if args.vocab else toy_text_pool()
        with step(REPORT, f"fitting PCLens on the heads {components[0]} ({args.n} images, {len(texts)} texts)"):
            result = pclens.fit(
                model, batches, components=components, texts=texts, n_texts=args.texts, max_pcs=args.max_pcs
            )
        if args.save_result:
            result.save(args.save_result)
    with step(REPORT, "embedding the images and decomposing them into the heads' contributions"):
        embeddings = embed_images(model, batches)
        contributions = head_contributions(model, result, batches)
    known = None if args.vocab else toy_known_words()  # the toy pool's own words; distractors are marked
    with step(REPORT, f"writing a page per head ({len(result)} heads) to {args.out}"):
        path = write_pclens_report(
            result,
            images,
            embeddings,
            args.out,
            args.pcs,
            args.images,
            args.texts,
            args.min_strength,
            progress=True,
            contributions=contributions,
            known_words=known,
            min_cosine=args.min_cosine,
        )
    print(f"report written to {path}")


def _fit_images(model, args: argparse.Namespace, task):
    """Batches PCLens is fitted on: held-out toy images (a fresh seed, all shapes), or for
    Waterbirds the evaluation images themselves (transductive, as in the reference's
    Waterbirds experiment)."""
    if args.waterbirds:
        return task.batches(args.batch_size, args.workers)
    _, x = _toy_data(model, args.n_fit, args.seed)
    return x.split(args.batch_size)


def _cmd_debias(args: argparse.Namespace) -> None:
    from hookedclip.data.vocab import load_vocabulary, toy_text_pool, vocabulary
    from hookedclip.methods import pclens
    from hookedclip.methods.pclens.debias import sweep_task, toy_task, waterbirds_task

    ks = int_list(args.ks, "--ks", minimum=1, what="PCs per concept", example="1,2,5")
    torch.set_num_threads(max(1, args.threads))
    model = load_command_model(args, DEBIAS)
    components = _analysed_heads(model, args.layers)
    with step(DEBIAS, "preparing the test and validation images and the classifier"):
        if args.waterbirds:
            task = waterbirds_task(model, args.waterbirds, args.split, args.limit)
            validation = _waterbirds_validation(model, args)
        else:
            task = toy_task(model, args.n, args.eval_seed)
            validation = toy_task(model, split="validation")
    if args.result:
        result = PCLensResult.load(args.result, model=model)
    else:
        default = toy_text_pool() if args.model == "toy" else vocabulary("english")
        texts = load_vocabulary(args.vocab) if args.vocab else default
        with step(DEBIAS, f"fitting PCLens on the heads {components[0]} ({len(texts)} label texts)"):
            result = pclens.fit(
                model,
                _fit_images(model, args, task),
                components=components,
                texts=texts,
                n_texts=3,
                max_pcs=args.max_pcs,
            )
    with step(DEBIAS, f"sweeping K = {args.ks}"):
        sweep = sweep_task(
            model,
            result,
            task,
            concepts=args.concept or None,
            workers=args.workers,
            ks=ks,
            margin=args.margin / 100,
            batch_size=args.batch_size,
            validation=validation,
            random_draws=args.random_draws,
        )
    summary = sweep.summary()
    if not args.waterbirds and sweep.chosen.k:
        with step(DEBIAS, "texture and shape accuracy with the picked PCs removed (canonical world test set)"):
            summary += "\n" + _attribute_control(model, result, sweep, args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sweep.to_csv(out / "debias.csv")
    sweep.plot(out / "debias.png")
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)
    print(f"written: {out / 'debias.csv'}, {out / 'debias.png'}, {out / 'summary.txt'}")


def _waterbirds_validation(model, args: argparse.Namespace):
    """The Waterbirds split K is chosen on, or None (then K is chosen on the evaluation split,
    and the summary says so)."""
    from hookedclip.methods.pclens.debias import waterbirds_task

    if args.validation_split == "none" or args.validation_split == args.split:
        return None
    task = waterbirds_task(model, args.waterbirds, args.validation_split, args.limit)
    if len(task.labels) == 0:
        print(f"{DEBIAS}: no {args.validation_split!r} images in {args.waterbirds}: K is chosen on {args.split!r}")
        return None
    return task


def _attribute_control(model, result, sweep, batch_size: int) -> str:
    """Texture and shape accuracy before and after removing the picked PCs: does the model
    become blind to the texture, and what does the shape lose?"""
    from hookedclip.methods.pclens.debias import removal_accuracy, toy_attribute_data
    from hookedclip.zeroshot import accuracy_text

    images, targets = toy_attribute_data(model, ("texture", "shape"))
    measured = removal_accuracy(model, result, images.split(batch_size), targets, sweep.chosen.removed)
    return "\n".join(
        f"control: {attribute} accuracy (all shapes, {n} images) {accuracy_text(before, n)} -> "
        f"{accuracy_text(after, n)} with the {sweep.chosen.n_removed} picked PCs removed"
        for attribute, (before, after, n) in measured.items()
    )


def _add_debias(sub) -> None:
    deb = sub.add_parser("debias", help="remove a spurious concept's PCs: worst-group / average accuracy vs K")
    add_model_arguments(deb)
    deb.add_argument(
        "--waterbirds",
        default=None,
        metavar="DIR",
        help="Waterbirds folder (metadata.csv + images) instead of the toy spurious split",
    )
    deb.add_argument("--split", default="test", help="Waterbirds split the accuracies are reported on")
    deb.add_argument(
        "--validation-split",
        default="val",
        help="Waterbirds split K is chosen on ('none': choose on --split itself); the toy uses its validation set",
    )
    deb.add_argument("--limit", type=positive, default=None, help="use only the first N Waterbirds images")
    add_canonical_set_arguments(deb)
    deb.add_argument("--random-draws", type=int, default=5, help="random-PC controls (as many PCs as the pick)")
    deb.add_argument("--n-fit", type=positive, default=1024, help="held-out toy images PCLens is fitted on")
    deb.add_argument("--seed", type=int, default=11, help="seed of the toy fit images")
    deb.add_argument(
        "--concept",
        action="append",
        default=None,
        help="a spurious concept text (repeat; default: the toy textures' words, or "
        "'water background' and 'land background' for Waterbirds)",
    )
    deb.add_argument("--ks", default="1,2,3,5,8,12,20,30,50", help="PCs per concept to remove (comma list)")
    deb.add_argument("--margin", type=float, default=1.0, help="average-accuracy points the pick may lose")
    deb.add_argument("--layers", type=positive, default=4, help="analyse the heads of the last N layers")
    deb.add_argument("--max-pcs", type=positive, default=80, help="cap on PCs per head")
    deb.add_argument("--vocab", default=None, help="label vocabulary file (default: toy pool / english)")
    deb.add_argument("--result", default=None, help="use a saved PCLens result instead of fitting")
    deb.add_argument("--batch-size", type=positive, default=256, help="images per forward pass")
    deb.add_argument("--workers", type=int, default=0, help="image loading workers (Waterbirds)")
    deb.add_argument("--threads", type=positive, default=1, help="torch CPU threads")
    deb.add_argument("--out", default="pclens-debias", help="output folder")
    deb.set_defaults(func=_cmd_debias)


def add_pclens_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``hookedclip pclens report`` and ``hookedclip pclens debias`` on the subparsers."""
    group = subparsers.add_parser("pclens", help="PCLens: per-head principal components labelled with text")
    sub = group.add_subparsers(dest="pclens_command", required=True, metavar="{report,debias}")
    rep = sub.add_parser("report", help="HTML page per analysed head: PCs, text labels, image strips, strengths")
    rep.add_argument("--model", default="toy", help=MODEL_HELP)
    rep.add_argument("--data", default="toy", help="image source (only 'toy' for now)")
    add_held_out_arguments(rep, 1024, n_help="held-out images")
    rep.add_argument("--layers", type=positive, default=4, help="analyse the heads of the last N layers")
    rep.add_argument("--max-pcs", type=positive, default=80, help="cap on PCs per head")
    rep.add_argument("--texts", type=positive, default=3, help="texts per side of each PC")
    rep.add_argument("--vocab", default=None, help="label vocabulary file, one text per line (default: toy pool)")
    rep.add_argument("--pcs", type=positive, default=5, help="PCs with image strips per head")
    rep.add_argument("--images", type=positive, default=8, help="top and bottom images per PC")
    rep.add_argument(
        "--min-strength",
        type=float,
        default=MIN_STRENGTH,
        help="list PCs below this %% of their head's retained variance apart (0: list all)",
    )
    rep.add_argument(
        "--min-cosine",
        type=float,
        default=LOW_COSINE,
        help="mark labels whose |cosine| with the PC is below this as weak (default: %(default)s)",
    )
    rep.add_argument("--batch-size", type=positive, default=256, help="images per forward pass")
    rep.add_argument("--threads", type=positive, default=1, help="torch CPU threads")
    rep.add_argument("--result", default=None, help="use a saved PCLens result instead of fitting")
    rep.add_argument("--save-result", default=None, help="also save the fitted result to this folder")
    rep.add_argument("--out", default="pclens-report", help="report folder")
    rep.set_defaults(func=_cmd_report)
    _add_debias(sub)
    return group
