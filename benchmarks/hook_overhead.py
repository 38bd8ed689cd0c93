"""Cost of the hooked model against open_clip's own forward, in one process, same weights.

Reports ratios against the baseline measured in the same run (never absolute targets):

- ``hooked / open_clip``: ``HookedCLIP.encode_image`` with no hooks vs ``open_clip``'s
  ``encode_image`` (target <= 1.02);
- the cost of ``run_with_cache`` on every ``hook_z`` and on every ``hook_result``;
- peak memory of each (CUDA: ``max_memory_allocated``; CPU: peak RSS of a fresh subprocess
  per variant, minus the subprocess's RSS after loading the models).

Usage: ``python benchmarks/hook_overhead.py [--model ViT-B-16] [--batch 16] [--device cpu]
[--dtype fp32|bf16] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from _memory import status_bytes  # benchmarks/ is on sys.path when run as a script

VARIANTS = ("open_clip", "hooked", "cache_z", "cache_result")


def build(model_name: str, device: str, dtype: torch.dtype):
    import open_clip

    from hookedclip import HookedCLIP

    torch.manual_seed(0)
    source = open_clip.create_model(model_name).eval().to(device=device, dtype=dtype)
    hooked = HookedCLIP.from_open_clip(source).to(device)
    return source, hooked


def runner(variant: str, source, hooked, images):
    if variant == "open_clip":
        return lambda: source.encode_image(images)
    if variant == "hooked":
        return lambda: hooked.encode_image(images)
    suffix = "hook_z" if variant == "cache_z" else "hook_result"
    return lambda: hooked.run_with_cache(images, names_filter=lambda n: n.startswith("visual") and n.endswith(suffix))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_variants(args, source, hooked, images) -> dict[str, float]:
    """Median seconds per call; variants interleaved so drifts in machine load hit all alike."""
    fns = {v: runner(v, source, hooked, images) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        for _ in range(args.repeats):
            for v, fn in fns.items():
                sync(args.device)
                start = time.perf_counter()
                fn()
                sync(args.device)
                times[v].append(time.perf_counter() - start)
    return {v: statistics.median(t) for v, t in times.items()}


def peak_memory_child(args, variant: str) -> float:
    """Peak bytes of one variant's forward, measured in this (fresh) process."""
    dtype = DTYPES[args.dtype]
    source, hooked = build(args.model, args.device, dtype)
    size = hooked.cfg.vision.image_size
    images = torch.randn(args.batch, 3, size, size, device=args.device, dtype=dtype)
    fn = runner(variant, source, hooked, images)
    with torch.inference_mode():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = fn()
            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated() - base)
        # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM), so model building
        # does not mask the forward's peak.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status_bytes("VmRSS")
        out = fn()  # noqa: F841  (kept alive: a cache's tensors count)
        return float(status_bytes("VmHWM") - base)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(peak_memory_child(args, args.memory_child)))
        return

    dtype = DTYPES[args.dtype]
    source, hooked = build(args.model, args.device, dtype)
    size = hooked.cfg.vision.image_size
    images = torch.randn(args.batch, 3, size, size, device=args.device, dtype=dtype)
    times = time_variants(args, source, hooked, images)
    del source, hooked
    base = times["open_clip"]
    print(f"{args.model}, batch {args.batch}, {args.device} {args.dtype}, median of {args.repeats}")
    print(f"{'variant':<14}{'s/call':>10}{'ratio':>9}{'peak MB':>10}")
    for v in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            v,
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
        ]
        peak = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(f"{v:<14}{times[v]:>10.3f}{times[v] / base:>9.3f}{peak / 2**20:>10.0f}")
    print(f"hooked / open_clip = {times['hooked'] / base:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
