"""Regenerate the figures of docs/sae.md: docs/figures/sae_training.png, the training curves (loss,
cosine, FVU of the LayerNorm-normalised vectors, dead fraction) of the shipped toy autoencoder, read
from its training log (recipe: batch 256, lr 1e-3, the faster mode; the toy model's last-layer
class token of 4,096 training images). With ``--compare``, both recipes are trained again here,
the faster one and the published one (batch 32, lr 2e-4) over as many vectors: several minutes.

Run: python docs/make_sae_figures.py [--out docs/figures] [--compare]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from figure_args import figure_args  # noqa: E402

from hookedclip import HookedCLIP  # noqa: E402
from hookedclip.data import toy_dataset  # noqa: E402
from hookedclip.data.extract import extract  # noqa: E402
from hookedclip.methods import sae as S  # noqa: E402
from hookedclip.methods.sae.pretrained import LOG_JSON, RECIPE, WEIGHTS  # noqa: E402

PANELS = (
    ("loss", "loss (100 · mean squared difference of unit vectors)"),
    ("cosine", "cosine(x̂, h)"),
    ("fvu", "FVU of LN(x̂) against LN(h)"),
    ("dead_fraction", "latents silent for 10,000 vectors"),
)


def curves(store, target, model) -> dict[str, S.TrainLog]:
    shipped = dict(RECIPE["config"])
    samples = shipped["steps"] * shipped["batch_size"]
    runs = {
        "shipped: batch 256, lr 1e-3 (faster mode)": S.TrainConfig(**shipped, log_every=25, checkpoint_every=0),
        "published: batch 32, lr 2e-4": S.TrainConfig(
            **{**shipped, "batch_size": 32, "lr": 2e-4, "steps": samples // 32}, log_every=200, checkpoint_every=0
        ),
    }
    return {name: S.train(store, target, cfg, model=model)[1] for name, cfg in runs.items()}


def plot(logs: dict[str, S.TrainLog], path: Path) -> Path:
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (metric, title) in zip(axes, PANELS):
        for name, log in logs.items():
            ax.plot([s / 1e3 for s in log.samples], getattr(log, metric), label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training vectors (thousands)")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("TopK autoencoder (256 latents, k 8) on the toy CLIP's last-layer class token", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _compare_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare", action="store_true", help="also train the published recipe (minutes)")


def main(argv: list[str] | None = None) -> None:
    args = figure_args(__doc__, argv, _compare_option)
    logs = {"shipped: batch 256, lr 1e-3 (faster mode)": S.TrainLog.load(WEIGHTS / LOG_JSON)}
    if args.compare:
        model = HookedCLIP.from_pretrained("toy").eval()
        target = "visual.blocks.3.hook_resid_post@0"
        with tempfile.TemporaryDirectory() as tmp:
            dataset = toy_dataset(RECIPE["images"], seed=RECIPE["seed"], split="train")
            store = extract(model, dataset, [target], Path(tmp) / "store", batch_size=512, progress=False)
            logs = curves(store, target, model)
    for name, log in logs.items():
        print(name, {k: round(v, 4) for k, v in log.final.items()})
    print(plot(logs, args.out / "sae_training.png"))


if __name__ == "__main__":
    main()
