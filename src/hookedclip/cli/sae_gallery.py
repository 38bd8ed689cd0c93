"""``hookedclip sae gallery``: the top images of every latent, labelled with a vocabulary, as an
HTML page.

::

    hookedclip sae gallery --sae my-sae --store toy-store --out gallery     # toy model, toy vocabulary
    hookedclip sae gallery --sae my-sae --data toy:2048 --out gallery       # no store: run the model
    hookedclip sae gallery --sae sae-b16 --model ViT-B-16 --pretrained openai --store wb-store \\
        --data waterbirds:/data/waterbirds --vocab english --out gallery

The per-latent top samples come from the store (no model forward) or, without ``--store``, from
the images of ``--data`` run through the model with the autoencoder observing. The images are
read again by their dataset indices (the toy world re-renders them), embedded by the model (or
``--embed-model``) and compared with the vocabulary's texts. The folder also holds the two
results (``top/``, ``labels/``), which ``TopActivations.load`` and ``LatentLabels.load`` read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hookedclip.cli._common import (
    CommandError,
    add_weights_arguments,
    check_pretrained_available,
    positive,
    step,
)

NAME = "hookedclip sae gallery"


def add_commands(sub) -> None:
    """Register ``gallery`` on the ``sae`` group's subparsers."""
    p = sub.add_parser(
        "gallery",
        help="HTML gallery: each latent's top images with activations, text label, alignment, clarity",
        description="The top images of every latent of a sparse autoencoder, labelled with a vocabulary, as an "
        "HTML page (index.html, the images, and the TopActivations and LatentLabels results).",
    )
    p.add_argument("--sae", required=True, help="autoencoder folder (written by TopKSAE.save)")
    p.add_argument("--store", default=None, help="activation store holding the residual stream the autoencoder reads")
    p.add_argument("--model", default="toy", help="toy | open_clip name | saved HookedCLIP dir | hf:LOCAL_DIR")
    add_weights_arguments(p)
    p.add_argument(
        "--data",
        default=None,
        help="the images (toy[:N], waterbirds:ROOT[:SPLIT], imagenet-val:ROOT, a folder); default: the toy "
        "world the store was extracted from (toy:1024 without --store)",
    )
    p.add_argument("--vocab", default="toy", help="label texts: toy, imagenet, english, english-curated, or a file")
    p.add_argument("--embed-model", default=None, help="embed images and texts with this model (default: --model)")
    p.add_argument("--embed-pretrained", default=None, help="open_clip pretrained tag or file of --embed-model")
    p.add_argument("--top", type=positive, default=8, help="images shown per latent")
    p.add_argument("--n", type=positive, default=20, help="top images a latent's embedding and clarity average")
    p.add_argument("--keep", type=positive, default=100, help="top samples kept per latent")
    p.add_argument(
        "--pool", default="max", choices=["max", "mean"], help="per-image statistic of a spatial autoencoder"
    )
    p.add_argument("--latents", type=int, nargs="+", default=None, help="show these latents (default: most aligned)")
    p.add_argument("--max-latents", type=positive, default=64, help="latents shown when --latents is not given")
    p.add_argument("--batch-size", type=positive, default=256, help="images per forward pass")
    p.add_argument("--out", required=True, help="gallery folder")
    p.set_defaults(func=run_gallery)


def run_gallery(args: argparse.Namespace) -> Path:
    from hookedclip.data.store import ActivationStore
    from hookedclip.data.vocab import vocabulary
    from hookedclip.methods import sae as S
    from hookedclip.model.resolve import load_model
    from hookedclip.report.sae_gallery import write_gallery

    if args.n < 2:
        raise CommandError(f"--n {args.n}: a latent's embedding and clarity need at least 2 images, e.g. --n 20")
    if args.keep < max(args.n, args.top):
        raise CommandError(f"--keep {args.keep} is below --n {args.n} or --top {args.top}: keep at least as many")
    sae = S.TopKSAE.load(args.sae)
    concepts = vocabulary(args.vocab)
    store = ActivationStore(args.store) if args.store else None
    with step(NAME, f"loading {args.model}"):
        check_pretrained_available(args.model, args.pretrained, args.download)
        model = load_model(args.model, args.pretrained).eval()
        sae.check_model(model)
    if args.latents and not all(0 <= j < sae.d_sae for j in args.latents):
        raise CommandError(f"--latents {args.latents}: the autoencoder has latents 0 to {sae.d_sae - 1}")
    dataset = _dataset(args.data, store)
    with step(NAME, "collecting the top samples of every latent"):
        if store is not None:
            store.check(model=model)
            top = S.top_activations_from_store(sae, store, n=args.keep, pool=args.pool, n_layers=model.cfg.n_layers)
        else:
            inputs = _inputs(dataset, model)
            batches = (
                inputs(list(range(i, min(i + args.batch_size, len(dataset)))))
                for i in range(0, len(dataset), args.batch_size)
            )
            top = S.top_activations(model, sae, batches, n=args.keep, pool=args.pool)
    embed_model = model
    if args.embed_model:
        check_pretrained_available(args.embed_model, args.embed_pretrained, args.download)
        embed_model = load_model(args.embed_model, args.embed_pretrained).eval()
    with step(NAME, f"labelling with {len(concepts)} texts"):
        labels = S.label_with_model(
            top, model, _inputs(dataset, embed_model), concepts, n=args.n, embed_model=embed_model
        )
    out = Path(args.out)
    top.save(out / "top")
    labels.save(out / "labels")
    with step(NAME, "writing the gallery"):
        path = write_gallery(
            labels, _display(dataset), out, top=args.top, latents=args.latents, max_latents=args.max_latents
        )
    print(path)
    return path


def _dataset(spec: str | None, store):
    """The images behind the sample indices: ``--data``, or the toy world the store was
    extracted from (found by its fingerprint)."""
    from hookedclip.data.datasets import open_dataset, toy_dataset
    from hookedclip.data.store import StoreMismatch

    if spec is not None:
        dataset = open_dataset(spec)
        if store is not None:
            store.check(dataset=dataset)
        return dataset
    if store is None:
        return toy_dataset(1024)
    guess = toy_dataset(len(store))
    try:
        store.check(dataset=guess)
    except StoreMismatch:
        raise CommandError(
            f"the store at {store.path} was not extracted from the toy world toy:{len(store)}: pass --data with the "
            "images it was extracted from (as given to hookedclip cache)"
        ) from None
    return guess


def _inputs(dataset, model):
    """Model inputs of the given dataset indices: toy images re-rendered at the model's size."""
    from hookedclip.data.datasets import ToyImages
    from hookedclip.methods import sae as S

    if isinstance(dataset, ToyImages):
        import copy

        world = copy.copy(dataset.world)  # the same items, rendered at the model's input size
        world.image_size = model.cfg.vision.image_size
        return S.toy_image_inputs(world, model)
    return S.dataset_image_inputs(dataset, model)


def _display(dataset, size: int = 128):
    """uint8 images of the given indices for the page: toy images as rendered, others centre
    cropped to ``size`` pixels."""
    from hookedclip.data.datasets import ToyImages

    if isinstance(dataset, ToyImages):
        return dataset.world.images

    def images(index: list[int]) -> list[np.ndarray]:
        from PIL import Image, ImageOps

        out = []
        for i in index:
            image = dataset[i]["image"]
            image = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image
            out.append(np.asarray(ImageOps.fit(image.convert("RGB"), (size, size))))
        return out

    return images
