"""Regenerate the figures of docs/attribution.md: docs/figures/sae_attribution_bars.png (one
image's attributions to its shape prompt), docs/figures/sae_deletion.png (deletion curves, the
error dropped) and docs/figures/sae_insertion.png (insertion curves, the error kept), on the toy
model with an autoencoder fitted here (seeded: the same figures every run).

Run: python docs/make_attribution_figures.py [--out docs/figures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from hookedclip import HookedCLIP
from hookedclip.methods import sae as S
from hookedclip.toy.attributes import SHAPES
from hookedclip.toy.dataset import ToyWorld
from hookedclip.toy.model import images_to_tensor


def class_token(model, world: ToyWorld) -> torch.Tensor:
    x = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    with torch.no_grad():
        return model.encode_image(x, stop_at_layer=model.cfg.n_layers)[:, 0]


def fit_sae(model, h: torch.Tensor, steps: int = 400) -> S.TopKSAE:
    torch.manual_seed(0)
    sae = S.TopKSAE(S.SAEConfig(model.cfg.d_model, 256, 8, layer=-1, token="cls"), model=model)
    optimiser = torch.optim.AdamW(sae.parameters(), lr=2e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = h[torch.randint(0, len(h), (128,), generator=order)]
        loss = 100 * (F.normalize(sae(batch, mode="recon_only"), dim=-1) - F.normalize(batch, dim=-1)).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        sae.normalize_decoder_()
    return sae.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "figures")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    model = HookedCLIP.from_pretrained("toy")
    sae = fit_sae(model, class_token(model, ToyWorld(2048, seed=0, split="train")))
    world = ToyWorld(512, seed=0, split="test")
    h = class_token(model, world)
    texts = [f"a photo of a {s}." for s in SHAPES]
    targets = torch.tensor([SHAPES.index(a.shape) for a in world.attributes()])
    attribution = S.attribute(model, sae, residuals=h, texts=texts)
    attribution.plot(args.out / "sae_attribution_bars.png", image=0, text=int(targets[0]))
    head = S.output_head(model, texts=texts)
    scores = S.method_scores(model, sae, h, head, targets)
    for mode, splice in (("deletion", "recon_only"), ("insertion", "error_kept")):
        curves = S.faithfulness(model, sae, scores, head, targets, residuals=h, mode=mode, splice=splice, steps=8)
        curves.plot(args.out / f"sae_{mode}.png")
        print(curves.summary())
    for name in ("sae_attribution_bars", "sae_deletion", "sae_insertion"):
        print(f"wrote {args.out / name}.png")


if __name__ == "__main__":
    main()
