"""``hookedclip sae attribute | faithfulness | reliance``: attribution to an autoencoder's latents
on toy images.

* ``attribute``: Act×Grad of each image's outputs (its class prompts, or ``--text``), the top
  latents per prediction as ``top.csv`` and an HTML page, and the saved result.
* ``faithfulness``: deletion (or insertion) curves of Act×Grad and the baselines, from cached
  residuals: ``curves.csv``, ``curves.png``, ``summary.txt``.
* ``reliance``: the (class, latent) pairs a class relies on against its label on the toy
  spurious split (circle / square): ``reliance.csv`` and ``summary.txt``. Needs the latents'
  labels (``--labels``, one per line); alignments are cosines of the labels' and the class
  prompts' text embeddings unless ``--alignment`` gives them (``.npy`` or ``.pt``, ``[d_sae,
  n_classes]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip.cli._common import CommandError, positive, step

ATTRIBUTES = ("shape", "color", "texture", "background", "size", "position")


def add_commands(sub) -> None:
    """Register ``attribute``, ``faithfulness`` and ``reliance`` on the ``sae`` group's subparsers."""
    att = sub.add_parser("attribute", help="Act×Grad attribution of predictions to the latents (table + HTML)")
    _common_arguments(att, "sae-attribution")
    att.add_argument("--text", action="append", default=None, help="a prompt (repeat; default: the class prompts)")
    att.add_argument("--top", type=positive, default=5, help="latents listed per prediction")
    att.add_argument("--method", choices=("auto", "closed_form", "autograd"), default="auto", help="how to compute")
    att.set_defaults(func=_cmd_attribute, n=8)

    fai = sub.add_parser("faithfulness", help="deletion / insertion curves of Act×Grad and the baselines")
    _common_arguments(fai, "sae-faithfulness")
    fai.add_argument("--mode", choices=("deletion", "insertion"), default="deletion", help="remove or restore")
    fai.add_argument("--ablation", choices=("zero", "mean"), default="zero", help="what a removed latent becomes")
    fai.add_argument("--steps", type=positive, default=10, help="latents removed, 0..STEPS")
    fai.set_defaults(func=_cmd_faithfulness, n=256, splice="recon_only")

    rel = sub.add_parser("reliance", help="flag latents a class relies on whose label does not fit it")
    _common_arguments(rel, "sae-reliance", attribute=False)
    rel.add_argument("--alignment", default=None, help="alignments [d_sae, n_classes] (.npy or .pt)")
    rel.add_argument("--min-share", type=float, default=0.1, help="share of positive relevance that is relevant")
    rel.add_argument("--max-alignment", type=float, default=0.2, help="alignment below which a label is unexpected")
    rel.add_argument("--max-z", type=float, default=0.0, help="z-score below which a label is unexpected")
    rel.add_argument("--test", choices=("absolute", "z", "either", "both"), default="either", help="which tests flag")
    rel.set_defaults(func=_cmd_reliance, n=512)


def _common_arguments(parser: argparse.ArgumentParser, out: str, attribute: bool = True) -> None:
    parser.add_argument("--sae", required=True, help="autoencoder folder (written by TopKSAE.save)")
    parser.add_argument("--model", default="toy", help="toy | saved HookedCLIP dir | hf:DIR | open_clip name")
    parser.add_argument("--data", default="toy", help="images: the toy world (the only source for now)")
    parser.add_argument("--n", type=positive, help="toy images")
    parser.add_argument("--seed", type=int, default=7, help="toy image seed")
    if attribute:
        parser.add_argument("--attribute", choices=ATTRIBUTES, default="shape", help="which class prompts")
    parser.add_argument("--output", choices=("cosine", "logit", "probability"), default="cosine", help="y")
    parser.add_argument("--splice", choices=("error_kept", "recon_only"), default="error_kept", help="splice mode")
    parser.add_argument("--labels", default=None, help="latent labels, one per line (d_sae lines)")
    parser.add_argument("--threads", type=positive, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=out, help="output folder")


def _load(args: argparse.Namespace, name: str):
    from hookedclip.methods import sae as S
    from hookedclip.model.resolve import load_model

    if args.data != "toy":
        raise CommandError(f"--data {args.data!r}: this command reads only the toy world for now; use --data toy")
    if not (Path(args.sae) / "sae.json").is_file():
        raise CommandError(f"--sae {args.sae}: no autoencoder there; give a folder written by TopKSAE.save")
    torch.set_num_threads(max(1, args.threads))
    with step(name, f"loading {args.model} and the autoencoder {args.sae}"):
        model = load_model(args.model)
        sae = S.TopKSAE.load(args.sae, model=model).to(model.dtype)
    labels = None
    if args.labels:
        path = Path(args.labels)
        if not path.is_file():
            raise CommandError(f"--labels {args.labels}: no such file; give a text file with one label per latent")
        labels = path.read_text().splitlines()
        if len(labels) != sae.d_sae:
            raise CommandError(
                f"--labels {args.labels}: {len(labels)} lines for {sae.d_sae} latents; one label per line"
            )
    return model, sae, labels


def _toy(model, n: int, seed: int, spurious: bool = False):
    from hookedclip.toy.dataset import SpuriousSpec, ToyWorld
    from hookedclip.toy.model import images_to_tensor

    spec = SpuriousSpec() if spurious else None
    world = ToyWorld(n, seed=seed, split="test", spurious=spec, group_balanced=spurious)
    images = world.images()
    x = images_to_tensor(images, model.cfg.image_mean, model.cfg.image_std).to(model.device, model.dtype)
    return world, images, x


def _class_prompts(attribute: str, world) -> tuple[list[str], list[str], torch.Tensor]:
    from hookedclip.toy.text import class_prompts

    prompts = class_prompts(attribute)
    values = list(prompts)
    targets = torch.tensor([values.index(getattr(a, attribute)) for a in world.attributes()])
    return values, [p[0] for p in prompts.values()], targets


def _cmd_attribute(args: argparse.Namespace) -> None:
    from hookedclip.methods import sae as S
    from hookedclip.report.sae_attribution import write_attribution_page

    name = "hookedclip sae attribute"
    model, sae, labels = _load(args, name)
    world, images, x = _toy(model, args.n, args.seed)
    texts = args.text or _class_prompts(args.attribute, world)[1]
    with step(name, f"attributing {args.n} images x {len(texts)} prompts"):
        result = S.attribute(
            model, sae, x, texts=texts, output=args.output, splice=args.splice, labels=labels, method=args.method
        )
    out = Path(args.out)
    result.save(out / "result")
    path = write_attribution_page(result, out, images=images, n=args.top)
    print(result.summary())
    print(f"page written to {path}")


def _cmd_faithfulness(args: argparse.Namespace) -> None:
    from hookedclip.methods import sae as S
    from hookedclip.methods.sae.attribution import cls_residual
    from hookedclip.methods.sae.readout import require_before_readout

    name = "hookedclip sae faithfulness"
    model, sae, _ = _load(args, name)
    require_before_readout(model, sae, "hookedclip sae faithfulness")
    world, _, x = _toy(model, args.n, args.seed)
    _, texts, targets = _class_prompts(args.attribute, world)
    head = S.output_head(model, texts=texts, output=args.output)
    with step(name, f"scoring and deleting on {args.n} images"):
        h = torch.cat([cls_residual(model, sae, part) for part in x.split(256)])
        scores = S.method_scores(model, sae, h, head, targets, splice=args.splice)
        options = _options(args, "mode", "ablation", "splice", "steps")
        curves = S.faithfulness(model, sae, scores, head, targets, residuals=h, **options)
    _write(curves, args.out, "curves", plot=True)


def _cmd_reliance(args: argparse.Namespace) -> None:
    from hookedclip.methods import sae as S
    from hookedclip.zeroshot import embed_texts

    name = "hookedclip sae reliance"
    if args.labels is None:
        raise CommandError("--labels is required: a text file with one label per latent (from a labelling method)")
    model, sae, labels = _load(args, name)
    world, _, x = _toy(model, args.n, args.seed, spurious=True)
    classes = torch.as_tensor(world.groups() // 2)
    names = list(world.spurious.classes)
    texts = [f"a photo of a {c}." for c in names]
    alignment = _alignment(args.alignment, sae.d_sae, len(names))
    with step(name, f"attributing {args.n} images of the spurious split"):
        result = S.attribute(model, sae, x, texts=texts, output=args.output, splice=args.splice, labels=labels)
        if alignment is None:
            alignment = S.label_alignment(embed_texts(model, labels), embed_texts(model, texts))
    options = _options(args, "min_share", "max_alignment", "max_z", "test")
    report = S.unexpected_reliance(result, classes, alignment, class_names=names, **options)
    _write(report, args.out, "reliance")


def _options(args: argparse.Namespace, *names: str) -> dict:
    """The options ``names`` as keyword arguments: each option is named after the argument it sets."""
    return {name: getattr(args, name) for name in names}


def _write(result, out: str, stem: str, plot: bool = False) -> None:
    """``{stem}.csv`` (and ``{stem}.png`` with ``plot``) and ``summary.txt`` in the folder ``out``;
    the summary printed."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result.to_csv(folder / f"{stem}.csv")
    if plot:
        result.plot(folder / f"{stem}.png")
    (folder / "summary.txt").write_text(result.summary() + "\n")
    print(result.summary())
    print(f"results written to {folder}")


def _alignment(path: str | None, d_sae: int, n_classes: int) -> torch.Tensor | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"--alignment {path}: no such file; give a .npy or .pt array [d_sae, n_classes]")
    if file.suffix == ".npy":
        import numpy as np

        values = torch.from_numpy(np.load(file))
    else:
        values = torch.load(file, weights_only=True)
    if tuple(values.shape) != (d_sae, n_classes):
        raise CommandError(f"--alignment {path}: shape {tuple(values.shape)}, expected [{d_sae}, {n_classes}]")
    return values
