"""Sparse autoencoders: training from a store against a model in the loop; sparse against dense
decoding; top-N collection from a store against re-running the model.

Models: the toy CLIP (4 layers, width 128, 17 tokens; autoencoder 256 latents, k 8) and, with
``--vit``, a randomly initialised ViT-B-16 (12 layers, width 768, 197 tokens; autoencoder 30,000
latents, k 64, the published sizes). Both read the class token after the last block.

- ``train``: activations per second of :func:`hookedclip.methods.sae.train` from an activation
  store (batch 32), against the design that trains with the model in the loop: every step runs
  the model forward on 32 images with the autoencoder spliced in (``error_kept``), and the loss's
  backward goes through the model up to the hooked block (the target is not detached and the
  model's weights are not frozen), then the same clipped AdamW step on the autoencoder. The images
  are tensors made beforehand, so no image decoding is counted on either side.
- ``decode``: ``decode_sparse`` (gathering the k active atoms) against ``decode`` of the dense
  code, for a batch of codes.
- ``top-N``: the N most activating rows of every latent, streamed shard by shard from the store,
  against running the model on every image again; both give the same indices.

Every time is the fastest of ``--repeats``. Usage:
``python benchmarks/sae.py [--images 1024] [--steps 200] [--vit] [--vit-steps 2] [--threads 2]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hookedclip import HookedCLIP
from hookedclip.data.extract import extract
from hookedclip.methods import sae as S
from hookedclip.names import act_name
from hookedclip.toy.dataset import ToyWorld
from hookedclip.toy.model import images_to_tensor


class TensorImages(torch.utils.data.Dataset):
    """Preprocessed image tensors as a dataset ``extract`` reads."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": 0, "id": str(i)}

    def fingerprint(self) -> str:
        return f"bench-{len(self)}"


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def model_in_the_loop(model, images: torch.Tensor, sae_cfg: S.SAEConfig, steps: int, batch: int) -> float:
    """Seconds for ``steps`` training steps with the model in the loop (module docstring)."""
    sae = S.TopKSAE(sae_cfg, model=model)
    optimiser = torch.optim.AdamW(sae.parameters(), lr=2e-4, eps=1e-7, weight_decay=0.01)
    model.requires_grad_(True)
    grabbed = {}

    def grab(name):
        def hook(x, hook):
            grabbed[name] = x

        return hook

    start = time.perf_counter()
    for step in range(steps):
        x = images[(step * batch) % len(images) :][:batch]
        with S.splice(model, sae), sae.hooks(fwd_hooks=[("hook_sae_input", grab("h")), ("hook_sae_recons", grab("r"))]):
            model.encode_image(x)
        loss = S.cosine_loss(grabbed["r"], grabbed["h"])
        optimiser.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimiser.step()
        sae.normalize_decoder_()
    seconds = time.perf_counter() - start
    model.requires_grad_(False)
    return seconds


def top_n_from_store(sae, store, target: str, n: int) -> torch.Tensor:
    best_values, best_index, offset = None, None, 0
    with torch.no_grad():
        for shard in store.iter_shards([target]):
            codes = sae.encode(shard[target].float())
            index = torch.arange(offset, offset + len(codes)).unsqueeze(1).expand_as(codes)
            offset += len(codes)
            best_values, best_index = _merge(best_values, best_index, codes, index, n)
    return best_values, best_index


def top_n_rerun(sae, model, images: torch.Tensor, site: str, n: int, batch: int) -> torch.Tensor:
    best_values, best_index = None, None
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            _, cache = model.run_with_cache(x, names_filter=site)
            codes = sae.encode(cache[site][:, 0])
            index = torch.arange(start, start + len(codes)).unsqueeze(1).expand_as(codes)
            best_values, best_index = _merge(best_values, best_index, codes, index, n)
    return best_values, best_index


def _merge(values, index, codes, new_index, n):
    if values is not None:
        codes, new_index = torch.cat([values, codes]), torch.cat([index, new_index])
    keep = codes.topk(min(n, len(codes)), dim=0)
    return keep.values, new_index.gather(0, keep.indices)


def run(name: str, model, images: torch.Tensor, d_sae: int, k: int, args, steps: int, vit_steps: int) -> dict:
    print(f"\n== {name}: {len(images)} images, autoencoder {d_sae} latents, k {k}")
    site = act_name("resid_post", model.cfg.n_layers - 1)
    target = site + "@0"
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        store = extract(
            model, TensorImages(images), [target], Path(tmp), batch_size=64, rows_per_shard=256, progress=False
        )
        print(f"  extraction (once): {time.perf_counter() - start:.1f} s")
        cfg = S.TrainConfig(
            d_sae=d_sae, k=k, steps=steps, batch_size=32, checkpoint_every=0, log_every=steps, progress=False
        )
        t_store = best_of(args.repeats, lambda: S.train(store, target, cfg))
        rate_store = steps * 32 / t_store
        sae_cfg = S.SAEConfig(model.cfg.d_model, d_sae, k, layer=-1)
        t_loop = best_of(args.repeats, lambda: model_in_the_loop(model, images, sae_cfg, vit_steps, 32))
        rate_loop = vit_steps * 32 / t_loop
        ratios["train"] = rate_store / rate_loop
        print(f"  train, store:        {rate_store:10.0f} activations/s ({steps} steps)")
        print(f"  train, model in loop:{rate_loop:10.1f} activations/s ({vit_steps} steps)")
        print(f"  ratio store / model in the loop: {ratios['train']:.1f}x (target >= 10x)")

        sae = S.TopKSAE(sae_cfg)
        codes = torch.randn(1024, model.cfg.d_model)
        with torch.no_grad():
            values, indices = sae.select(sae.encode_pre(codes))
            dense = S.densify(values, indices, d_sae)
            t_sparse = best_of(args.repeats, lambda: sae.decode_sparse(values, indices))
            t_dense = best_of(args.repeats, lambda: sae.decode(dense))
            same = torch.allclose(sae.decode_sparse(values, indices), sae.decode(dense), atol=1e-4)
        ratios["decode"] = t_dense / t_sparse
        print(
            f"  decode 1024 codes: sparse {t_sparse * 1e3:.2f} ms, dense {t_dense * 1e3:.2f} ms, "
            f"ratio dense / sparse {ratios['decode']:.1f}x (equal: {same})"
        )

        n = 16
        t_topn_store = best_of(args.repeats, lambda: top_n_from_store(sae, store, target, n))
        t_topn_model = best_of(args.repeats, lambda: top_n_rerun(sae, model, images, site, n, 64))
        (v1, i1), (v2, i2) = top_n_from_store(sae, store, target, n), top_n_rerun(sae, model, images, site, n, 64)
        fired = v1 != 0  # where fewer than n rows fire, the zeros tie in any order
        same = torch.allclose(v1, v2, atol=1e-5) and torch.equal(i1[fired], i2[fired])
        ratios["top_n"] = t_topn_model / t_topn_store
        print(
            f"  top-{n} per latent: store {t_topn_store:.2f} s, re-running the model {t_topn_model:.2f} s, "
            f"ratio {ratios['top_n']:.1f}x (same indices: {same})"
        )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="toy images")
    parser.add_argument("--steps", type=int, default=200, help="store training steps")
    parser.add_argument("--loop-steps", type=int, default=20, help="model-in-the-loop steps (toy)")
    parser.add_argument("--vit", action="store_true", help="also a random ViT-B-16 (slow on a CPU)")
    parser.add_argument("--vit-images", type=int, default=64)
    parser.add_argument("--vit-steps", type=int, default=2, help="steps of each design on ViT-B-16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="1: steady timings on a shared machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")

    toy = HookedCLIP.from_pretrained("toy").eval()
    world = ToyWorld(args.images, seed=0, split="train")
    images = images_to_tensor(world.images(), tuple(toy.cfg.image_mean), tuple(toy.cfg.image_std))
    results = {"toy": run("toy CLIP", toy, images, 256, 8, args, args.steps, args.loop_steps)}
    if args.vit:
        from hookedclip.model.resolve import load_model

        vit = load_model("ViT-B-16").eval()
        big = F.interpolate(images[: args.vit_images], size=vit.cfg.vision.image_size, mode="bilinear")
        results["ViT-B-16"] = run("random ViT-B-16", vit, big, 30000, 64, args, args.vit_steps * 5, args.vit_steps)
    print("\nratios:", {name: {k: round(v, 1) for k, v in r.items()} for name, r in results.items()})


if __name__ == "__main__":
    main()
