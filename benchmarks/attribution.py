"""Attribution to autoencoder latents: the closed form against autograd, and deletion curves from
a cached residual against re-running the ViT at every step.

Setup: the toy model (or ``--model``, any name ``load_model`` takes), a random TopK autoencoder
(``--d-sae`` latents, ``--k`` active) on the last layer's class token, random unit prompts.

1. Attribution of ``--prompts`` prompts for ``--images`` images:
   - ``closed``: :func:`hookedclip.methods.sae.attribute` with ``method="closed_form"`` (one
     forward to the class token, then one ``[k, d_out] × [d_out, prompts]`` product per image);
   - ``per-prompt``: one forward and one backward of the spliced model per prompt (the
     reference's way, ``prompt_chunk=1``);
   - ``chunked``: the general path with ``--chunk`` prompts per backward (for information).
   The per-prompt run is timed on ``--timed-prompts`` prompts and scaled up linearly.
2. Deletion curves of the five scores (Act×Grad and the baselines), ``--steps`` steps, on
   ``--curve-images`` images: ``cached`` (all steps as residual edits, ``ln_post`` and the
   projection once) against ``rerun`` (the spliced model re-run per method and step, the
   reference's design). Both give the same curves (checked).

Usage: ``python benchmarks/attribution.py [--model toy] [--images 8] [--prompts 1000] ...``
"""

from __future__ import annotations

import argparse
import time

import torch

from hookedclip.methods import sae as S
from hookedclip.methods.sae.attribution import cls_residual
from hookedclip.model.resolve import load_model


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--timed-prompts", type=int, default=100, help="per-prompt autograd runs actually timed")
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--curve-images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = load_model(args.model).to(args.device).eval()
    cfg = model.cfg.vision
    sae = S.TopKSAE(S.SAEConfig(cfg.width, args.d_sae, args.k, layer=-1), model=model).to(args.device)
    d_out = model.visual.W_proj.shape[1]
    prompts = torch.randn(args.prompts, d_out, device=args.device)
    images = torch.randn(args.images, cfg.in_channels, cfg.image_size, cfg.image_size, device=args.device)
    print(f"model {args.model}, width {cfg.width}, d_sae {args.d_sae}, k {args.k}, device {args.device}")

    # ---- 1. attribution
    closed_s, closed = timed(lambda: S.attribute(model, sae, images, text_embeddings=prompts, method="closed_form"), 3)
    few = prompts[: args.timed_prompts]
    per_s, per = timed(lambda: S.attribute(model, sae, images, text_embeddings=few, method="autograd", prompt_chunk=1))
    per_s *= args.prompts / len(few)
    chunk_s, _ = timed(
        lambda: S.attribute(model, sae, images, text_embeddings=few, method="autograd", prompt_chunk=args.chunk)
    )
    chunk_s *= args.prompts / len(few)
    error = float((closed.R[:, : len(few)] - per.R).abs().max() / per.R.abs().max())
    print(f"attribution, {args.images} images x {args.prompts} prompts (max relative difference {error:.1e}):")
    print(f"  closed form          {closed_s:8.3f} s")
    print(f"  per-prompt autograd  {per_s:8.3f} s   ratio {per_s / closed_s:7.1f}x")
    print(f"  autograd, chunk {args.chunk:<4} {chunk_s:8.3f} s   ratio {chunk_s / closed_s:7.1f}x")

    # ---- 2. deletion curves
    x = torch.randn(args.curve_images, cfg.in_channels, cfg.image_size, cfg.image_size, device=args.device)
    head = S.output_head(model, text_embeddings=prompts[:10])
    targets = torch.arange(args.curve_images) % 10

    def cached():
        h = torch.cat([cls_residual(model, sae, part) for part in x.split(256)])  # the one ViT pass
        scores = S.method_scores(model, sae, h, head, targets)
        return S.faithfulness(model, sae, scores, head, targets, residuals=h, steps=args.steps)

    def rerun():
        h = torch.cat([cls_residual(model, sae, part) for part in x.split(256)])
        scores = S.method_scores(model, sae, h, head, targets)
        return S.faithfulness(model, sae, scores, head, targets, images=x, steps=args.steps)

    cached_s, fast = timed(cached, 3)
    rerun_s, slow = timed(rerun)
    same = float((fast.curves - slow.curves).abs().max())
    print(f"deletion curves, 5 methods x {args.steps + 1} steps on {args.curve_images} images (max |diff| {same:.1e}):")
    print(f"  cached residual      {cached_s:8.3f} s")
    print(f"  ViT re-run per step  {rerun_s:8.3f} s   ratio {rerun_s / cached_s:7.1f}x")


if __name__ == "__main__":
    main()
