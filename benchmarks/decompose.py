"""Per-head, per-token decomposition of the last layers: ours vs the straightforward path.

Both compute, for every head of the last ``--layers`` layers and every source token, the
head's direct contribution to the (normalised) image embedding with ln_post statistics
frozen at the clean run (each component its share of the LayerNorm mean and bias):

- naive: cache the layers' patterns and values, materialise every head's width-space
  output at the CLS query per source token ``[batch, token, head, d_model]``, then apply the
  frozen LayerNorm and the projection;
- ours: ``decompose_image(model, images, positions="all", components=["L8-11"])``, which
  folds ``W_O · diag(γ) · P`` per head and never forms a ``d_model``-wide per-head tensor.

Prints time and peak-memory ratios (naive / ours) measured in the same run, and the max
difference of the results. Time is the median CPU time of the process on ``--threads``
threads (default one), which other load on a shared machine barely moves; wall-clock time
on a busy machine measures the neighbours. Memory is the peak RSS of a fresh process
during one call, in total and beyond the returned result (working memory).

Both paths run the whole forward pass and return the same ``[rows, batch, token, d_out]``
tensor, so the total-time ratio cannot exceed naive / forward and the total-memory ratio
cannot exceed naive / result; the targets (>= 3x, >= 5x) apply to what a decomposition
controls: the time beyond the forward and the working memory.

Usage: ``python benchmarks/decompose.py [--batch 8] [--layers 4] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from _memory import status_bytes  # benchmarks/ is on sys.path when run as a script


def build(name: str):
    import open_clip

    from hookedclip import HookedCLIP

    torch.manual_seed(0)
    return HookedCLIP.from_open_clip(open_clip.create_model(name).eval())


def ours(model, images, layers: list[int]) -> torch.Tensor:
    from hookedclip.decompose import decompose_image

    stack = decompose_image(model, images, positions="all", components=[f"L{l}" for l in layers])
    return stack.tensor[:-1]  # drop the "rest" row: [layer * head, batch, token, d_out]


def naive(model, images, layers: list[int]) -> torch.Tensor:
    visual = model.visual
    L, H = len(visual.blocks), visual.cfg.heads
    names = {f"visual.blocks.{l}.attn.hook_{k}" for l in layers for k in ("pattern", "v")}
    names |= {f"visual.blocks.{L - 1}.hook_resid_post", "visual.ln_post.hook_scale"}
    emb, cache = model.run_with_cache(images, names_filter=lambda n: n in names)
    x = cache["resid_post", L - 1][:, 0]
    mu, sigma = x.mean(-1, keepdim=True), cache["ln_post_scale"][:, 0]
    gamma, beta, P = visual.ln_post.w, visual.ln_post.b, visual.W_proj
    T = cache["v", layers[0]].shape[1]
    omega = 1.0 / ((2 * L + 1) * H * T)
    norm = emb.norm(dim=-1)
    rows = []
    for l in layers:
        attn = visual.blocks[l].attn
        weighted = cache["pattern", l][:, :, 0].transpose(1, 2).unsqueeze(-1) * cache["v", l]  # [b, t, h, e]
        width = torch.einsum("bthe,hem->bthm", weighted, attn.W_O) + attn.b_O / (H * T)  # [b, t, h, d_model]
        ln = gamma * (width - omega * mu[:, None, None]) / sigma[:, None, None] + omega * beta
        joint = ln @ P / norm[:, None, None, None]  # [b, t, h, d_out]
        rows.append(joint.permute(2, 0, 1, 3))
    return torch.cat(rows)


def forward(model, images, layers: list[int]) -> torch.Tensor:
    """The plain forward pass both paths contain: the floor of either's cost."""
    return model.encode_image(images)


def run(fn_name: str, args) -> tuple[float, float, float]:
    """(median CPU seconds, peak bytes above the start, bytes of the result) of one path
    in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        fn_name,
        "--batch",
        str(args.batch),
        "--layers",
        str(args.layers),
        "--model",
        args.model,
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    # A fixed mmap threshold: large buffers go back to the system when freed, so the peak
    # RSS is the call's own peak.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
    seconds, peak, result = out.split()
    return float(seconds), float(peak), float(result)


def child(args) -> None:
    torch.set_num_threads(args.threads)
    model = build(args.model)
    L = len(model.visual.blocks)
    layers = list(range(L - args.layers, L))
    images = torch.randn(args.batch, 3, model.cfg.vision.image_size, model.cfg.vision.image_size)
    fn = {"ours": ours, "naive": naive, "forward": forward}[args.child]
    with torch.no_grad():
        # Memory first, in the fresh process: freed buffers of earlier calls would otherwise
        # sit in the allocator's heap and hide this call's working memory from the RSS.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS
        base = status_bytes("VmRSS")
        result = fn(model, images, layers)
        peak = status_bytes("VmHWM") - base
        result_bytes = result.untyped_storage().nbytes()
        del result
        times = []
        for _ in range(args.repeats):
            start = time.process_time()
            fn(model, images, layers)
            times.append((time.process_time() - start) / args.threads)
    print(statistics.median(times), peak, result_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=["ours", "naive", "forward"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    model = build(args.model)
    L = len(model.visual.blocks)
    layers = list(range(L - args.layers, L))
    images = torch.randn(2, 3, model.cfg.vision.image_size, model.cfg.vision.image_size)
    with torch.no_grad():
        diff = (ours(model, images, layers) - naive(model, images, layers)).abs().max().item()
    del model
    t_ours, m_ours, r_ours = run("ours", args)
    t_naive, m_naive, r_naive = run("naive", args)
    t_fwd, m_fwd, _ = run("forward", args)
    mb = 2**20
    print(
        f"{args.model}, last {args.layers} layers, per head and token, batch {args.batch}, CPU fp32, "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'path':<9}{'CPU s':>8}{'beyond fwd s':>14}{'peak MB':>9}{'result MB':>11}{'working MB':>12}")
    for name, t, m, r in (
        ("forward", t_fwd, m_fwd, 0.0),
        ("naive", t_naive, m_naive, r_naive),
        ("ours", t_ours, m_ours, r_ours),
    ):
        print(f"{name:<9}{t:>8.2f}{t - t_fwd:>14.2f}{m / mb:>9.0f}{r / mb:>11.0f}{(m - r) / mb:>12.0f}")
    print(f"max |difference| {diff:.2e}")
    print(
        f"time: total {t_naive / t_ours:.2f}x faster (at most naive / forward = {t_naive / t_fwd:.2f}x); "
        f"beyond the forward {(t_naive - t_fwd) / max(t_ours - t_fwd, 1e-3):.1f}x (target >= 3)"
    )
    print(
        f"memory: total peak {m_naive / max(m_ours, 1):.2f}x lower (at most naive / result = "
        f"{m_naive / r_ours:.2f}x, both return the same tensor); "
        f"working memory {(m_naive - r_naive) / max(m_ours - r_ours, 1):.1f}x lower (target >= 5)"
    )


if __name__ == "__main__":
    main()
