"""The ``hookedclip pclens`` commands and the PCLens HTML report.

``hookedclip pclens debias`` runs :func:`hookedclip.methods.pclens_debias.debias_sweep`
(toy spurious split by default, ``--waterbirds DIR`` for Waterbirds) and writes
``debias.csv``, ``debias.png`` and ``summary.txt``.

``hookedclip pclens report`` fits PCLens on held-out toy images and writes a folder: an
overview page (strength curves, one row per head) and one page per analysed head with its
PCs, their text labels and strengths, and a strip of the top / bottom images of each PC
(scored by ``⟨ê, v⟩``, §4.3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from hookedclip import viz
from hookedclip.methods.pclens import HeadPCA, PCLensResult, top_images


def _label_text(pca: HeadPCA, i: int, n: int, side: str) -> str:
    if pca.pos_idx is None:
        return ""
    lab = pca.label_of(i, n)
    items = lab.positive if side == "+" else lab.negative
    return "; ".join(f"{t} ({c:+.2f})" for t, c in items)


def head_page(pca: HeadPCA, out_dir: Path, images: np.ndarray, embeddings: torch.Tensor, n_pcs: int, n_images: int,
              n_texts: int) -> Path:
    """One head's page: a table of its PCs and an image strip per PC (top row: highest ⟨ê, v⟩)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rel = pca.strength_rel.tolist()
    rows = [[str(i), f"{rel[i]:.1f}", _label_text(pca, i, n_texts, "+"), _label_text(pca, i, n_texts, "-")]
            for i in range(pca.k)]
    table = (["PC", "strength %", "positive texts (cos)", "negative texts (cos)"], rows)
    figures = []
    for i in range(min(n_pcs, pca.k)):
        top, bottom = top_images(pca, i, embeddings, n_images)
        scores = (torch.nn.functional.normalize(embeddings.double(), dim=-1) @ pca.components[i].double())
        idx = torch.cat([top, bottom]).tolist()
        captions = [f"{'top' if j < len(top) else 'bottom'} {float(scores[k]):+.2f}" for j, k in enumerate(idx)]
        name = f"pc{i}.png"
        viz.image_grid(images[idx], captions, out_dir / name, cols=len(top))
        label = f"PC {i} ({rel[i]:.1f}% of the retained variance)"
        if pca.pos_idx is not None:
            label += f": + {pca.label_of(i, 1).positive[0][0]} / − {pca.label_of(i, 1).negative[0][0]}"
        figures.append((name, label + ". Top row: highest ⟨ê, v⟩; bottom row: lowest."))
    k_text = (f"{pca.k} PCs keep {100 * float(pca.singular_values.sum()) / max(pca.total_singular, 1e-30):.1f}% "
              f"of ΣS over {pca.n} images; rank of the text projector Π: {int(torch.linalg.matrix_rank(pca.projector))}.")
    section = viz.Section(pca.label, [k_text], figures, [table])
    return viz.write_report(out_dir, f"PCLens: {pca.label}", [section])


def write_pclens_report(result: PCLensResult, images: np.ndarray, embeddings: torch.Tensor, out: str | Path,
                        n_pcs: int = 5, n_images: int = 8, n_texts: int = 3) -> Path:
    """The report folder: ``index.html`` (overview) and ``<head>/index.html`` per analysed head.

    Args:
        images: uint8 ``[N, H, W, 3]`` of the images behind ``embeddings``.
        embeddings: ``[N, d']`` final image embeddings (normalised here).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heads = list(result.heads.values()) + ([result.embedding] if result.embedding is not None else [])
    for pca in heads:
        head_page(pca, out / pca.label, images, embeddings, n_pcs, n_images, n_texts)
    steps = max(min(12, p.k) for p in result.heads.values())
    curves = {label: (p.strength_rel[:steps] / 100).tolist() for label, p in result.heads.items()}
    viz.line_curves(curves, [str(i) for i in range(steps)], out / "strengths.png",
                    "PC strengths per head (share of the head's retained variance)", "principal component",
                    ylabel="strength (%)")
    rows = [[p.label, str(p.k), f"{float(p.strength_rel[0]):.1f}" if p.k else "-",
             _label_text(p, 0, 2, "+"), _label_text(p, 0, 2, "-")] for p in heads]
    overview = viz.Section(
        "Analysed heads",
        [f"{len(result)} heads, {result.n_pcs} PCs; rank rule {result.settings.get('threshold')} of "
         f"{'ΣS' if result.settings.get('energy') == 'singular' else 'ΣS²'}, cap {result.settings.get('max_pcs')}. "
         "Click a head for its PCs, labels and image strips."],
        [("strengths.png", "Relative strength of the first PCs of every analysed head")],
        [(["head", "k", "PC0 strength %", "PC0 positive", "PC0 negative"], rows)],
    )
    meta = f"model {result.model.get('model_name')} ({result.model.get('source')}), weights {result.model.get('weights')}"
    path = viz.write_report(out, "PCLens report", [overview], meta=meta)
    html = path.read_text()
    for p in heads:  # link the head names of the overview table to their pages
        html = html.replace(f"<td>{p.label}</td>", f"<td><a href='{p.label}/index.html'>{p.label}</a></td>", 1)
    path.write_text(html)
    return path


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _toy_data(model, n: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.world import ToyWorld

    world = ToyWorld(n, seed=seed, split="test", image_size=model.cfg.vision.image_size)
    images = world.images()
    return images, images_to_tensor(images, model.cfg.image_mean, model.cfg.image_std)


def _cmd_report(args: argparse.Namespace) -> None:
    from hookedclip.cli import load_model
    from hookedclip.data.vocab import load_vocabulary, toy_text_pool
    from hookedclip.methods import pclens
    from hookedclip.zeroshot import embed_images

    torch.set_num_threads(max(1, args.threads))
    model = load_model(args.model)
    if args.data != "toy":
        raise ValueError(f"--data {args.data!r}: only the toy world is supported by this command for now")
    images, x = _toy_data(model, args.n, args.seed)
    batches = list(x.split(args.batch_size))
    if args.result:
        result = PCLensResult.load(args.result, model=model)
    else:
        texts = load_vocabulary(args.vocab) if args.vocab else toy_text_pool()
        L = model.cfg.vision.layers
        result = pclens.fit(model, batches, components=[f"L{max(0, L - args.layers)}-{L - 1}"], texts=texts,
                            n_texts=args.texts, max_pcs=args.max_pcs)
        if args.save_result:
            result.save(args.save_result)
    embeddings = embed_images(model, batches)
    path = write_pclens_report(result, images, embeddings, args.out, args.pcs, args.images, args.texts)
    print(f"report written to {path}")


def _fit_images(model, args: argparse.Namespace, task):
    """Batches PCLens is fitted on: held-out toy images (a fresh seed, all shapes), or for
    Waterbirds the evaluation images themselves (transductive, as in the reference, §4.7)."""
    if args.waterbirds:
        return task.batches(args.batch_size, args.workers)
    _, x = _toy_data(model, args.n_fit, args.seed)
    return x.split(args.batch_size)


def _cmd_debias(args: argparse.Namespace) -> None:
    from hookedclip.cli import load_model
    from hookedclip.data.vocab import load_vocabulary, toy_text_pool, vocabulary
    from hookedclip.methods import pclens
    from hookedclip.methods.pclens_debias import debias_sweep, toy_task, waterbirds_task

    torch.set_num_threads(max(1, args.threads))
    model = load_model(args.model, args.pretrained)
    if args.waterbirds:
        task = waterbirds_task(model, args.waterbirds, args.split, args.limit)
    else:
        task = toy_task(model, args.n, args.eval_seed)
    concepts = args.concept or task.concepts
    if args.result:
        result = PCLensResult.load(args.result, model=model)
    else:
        default = toy_text_pool() if args.model == "toy" else vocabulary("english")
        texts = load_vocabulary(args.vocab) if args.vocab else default
        L = model.cfg.vision.layers
        result = pclens.fit(model, _fit_images(model, args, task), components=[f"L{max(0, L - args.layers)}-{L - 1}"],
                            texts=texts, n_texts=3, max_pcs=args.max_pcs)
    ks = [int(k) for k in args.ks.split(",")]
    sweep = debias_sweep(model, result, task.classifier, concepts, task.batches(args.batch_size, args.workers),
                         task.labels, task.groups, ks, args.margin / 100, task.group_names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sweep.to_csv(out / "debias.csv")
    sweep.plot(out / "debias.png")
    (out / "summary.txt").write_text(sweep.summary() + "\n")
    print(sweep.summary())
    print(f"written: {out / 'debias.csv'}, {out / 'debias.png'}, {out / 'summary.txt'}")


def _add_debias(sub) -> None:
    deb = sub.add_parser("debias", help="remove a spurious concept's PCs: worst-group / average accuracy vs K")
    deb.add_argument("--model", default="toy", help="toy | saved HookedCLIP dir | hf:DIR | open_clip name")
    deb.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file")
    deb.add_argument("--waterbirds", default=None, metavar="DIR",
                     help="Waterbirds folder (metadata.csv + images) instead of the toy spurious split")
    deb.add_argument("--split", default="test", help="Waterbirds split (default %(default)s)")
    deb.add_argument("--limit", type=int, default=None, help="use only the first N Waterbirds images")
    deb.add_argument("--n", type=int, default=1000, help="toy spurious-split images (default %(default)s)")
    deb.add_argument("--eval-seed", type=int, default=12345, help="toy spurious split seed (as `toy evaluate`)")
    deb.add_argument("--n-fit", type=int, default=1024, help="held-out toy images PCLens is fitted on")
    deb.add_argument("--seed", type=int, default=11, help="seed of the toy fit images")
    deb.add_argument("--concept", action="append", default=None,
                     help="a spurious concept text (repeat; default: the toy textures' words, or "
                          "'water background' and 'land background' for Waterbirds)")
    deb.add_argument("--ks", default="1,2,3,5,8,12,20,30,50", help="PCs per concept to remove (comma list)")
    deb.add_argument("--margin", type=float, default=1.0,
                     help="average-accuracy points the pick may lose (default %(default)s)")
    deb.add_argument("--layers", type=int, default=4, help="analyse the heads of the last N layers")
    deb.add_argument("--max-pcs", type=int, default=80, help="cap on PCs per head (default %(default)s)")
    deb.add_argument("--vocab", default=None, help="label vocabulary file (default: toy pool / english)")
    deb.add_argument("--result", default=None, help="use a saved PCLens result instead of fitting")
    deb.add_argument("--batch-size", type=int, default=256)
    deb.add_argument("--workers", type=int, default=0, help="image loading workers (Waterbirds)")
    deb.add_argument("--threads", type=int, default=1)
    deb.add_argument("--out", default="pclens-debias", help="output folder (default: ./pclens-debias)")
    deb.set_defaults(func=_cmd_debias)


def add_pclens_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``hookedclip pclens report`` and ``hookedclip pclens debias`` on the subparsers."""
    group = subparsers.add_parser("pclens", help="PCLens: per-head principal components labelled with text")
    sub = group.add_subparsers(dest="pclens_command", required=True)
    rep = sub.add_parser("report", help="HTML page per analysed head: PCs, text labels, image strips, strengths")
    rep.add_argument("--model", default="toy", help="toy | saved HookedCLIP dir | hf:DIR | open_clip name")
    rep.add_argument("--data", default="toy", help="image source (only 'toy' for now)")
    rep.add_argument("--n", type=int, default=1024, help="held-out images (default %(default)s)")
    rep.add_argument("--seed", type=int, default=11)
    rep.add_argument("--layers", type=int, default=4, help="analyse the heads of the last N layers")
    rep.add_argument("--max-pcs", type=int, default=80, help="cap on PCs per head (default %(default)s)")
    rep.add_argument("--texts", type=int, default=3, help="texts per side of each PC")
    rep.add_argument("--vocab", default=None, help="label vocabulary file, one text per line (default: toy pool)")
    rep.add_argument("--pcs", type=int, default=5, help="PCs with image strips per head")
    rep.add_argument("--images", type=int, default=8, help="top and bottom images per PC")
    rep.add_argument("--batch-size", type=int, default=256)
    rep.add_argument("--threads", type=int, default=1)
    rep.add_argument("--result", default=None, help="use a saved PCLens result instead of fitting")
    rep.add_argument("--save-result", default=None, help="also save the fitted result to this folder")
    rep.add_argument("--out", default="pclens-report", help="report folder (default: ./pclens-report)")
    rep.set_defaults(func=_cmd_report)
    _add_debias(sub)
    return group


__all__ = ["head_page", "write_pclens_report", "add_pclens_commands"]
