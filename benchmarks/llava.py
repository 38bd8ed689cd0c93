"""Cost of LLaVA encoder probing, in one process, same weights, random LLaVA of a chosen size.

Reports ratios against baselines measured in the same run (never absolute targets):

- ``hooked tower / plain``: a ``LlavaForConditionalGeneration`` forward inside
  ``llava.hooked_vision_tower`` (no hooks) vs the plain ``transformers`` forward (target <= 1.05).
  The hooked tower runs only the blocks up to the layer LLaVA reads; ``--all-blocks`` makes it
  run them all, as the plain tower does, for a like-for-like comparison;
- ``decompose / cache``: ``llava.decompose_features`` of the selected hidden state (every
  component, every token) vs ``run_with_cache`` of every head's per-token output
  (``hook_result``) and every MLP output below that layer.

Usage: ``python benchmarks/llava.py [--width 384] [--layers 12] [--image 224] [--batch 4]
[--device cpu] [--repeats 5] [--all-blocks]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def build(args):
    import transformers as tf

    torch.manual_seed(0)
    vision = tf.CLIPVisionConfig(
        hidden_size=args.width,
        num_hidden_layers=args.layers,
        num_attention_heads=args.width // 64,
        intermediate_size=4 * args.width,
        image_size=args.image,
        patch_size=args.patch,
        hidden_act="quick_gelu",
    )
    text = tf.LlamaConfig(
        hidden_size=args.lm_width,
        num_hidden_layers=args.lm_layers,
        num_attention_heads=args.lm_width // 64,
        num_key_value_heads=args.lm_width // 64,
        intermediate_size=4 * args.lm_width,
        vocab_size=1000,
    )
    config = tf.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=999,
        vision_feature_layer=-1 if args.all_blocks else -2,
        vision_feature_select_strategy="default",
    )
    model = tf.LlavaForConditionalGeneration(config).eval().to(args.device)
    n_image = (args.image // args.patch) ** 2
    ids = torch.cat(
        [
            torch.ones(args.batch, 2, dtype=torch.long),
            torch.full((args.batch, n_image), 999),
            torch.randint(3, 900, (args.batch, 12)),
        ],
        dim=1,
    ).to(args.device)
    images = torch.randn(args.batch, 3, args.image, args.image, device=args.device)
    return model, {"input_ids": ids, "pixel_values": images}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_times(fns: dict, repeats: int, device: str) -> dict[str, float]:
    """Median seconds per call; variants interleaved so drifts in machine load hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    from hookedclip import HookedCLIP
    from hookedclip.methods import llava
    from hookedclip.names import act_name

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=384, help="vision tower width (heads of 64)")
    parser.add_argument("--layers", type=int, default=12, help="vision tower layers")
    parser.add_argument("--image", type=int, default=224, help="image size")
    parser.add_argument("--patch", type=int, default=16, help="patch size")
    parser.add_argument("--lm-width", type=int, default=512, help="language model width")
    parser.add_argument("--lm-layers", type=int, default=4, help="language model layers")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--all-blocks", action="store_true", help="LLaVA reads the last layer (all blocks run)")
    args = parser.parse_args()

    model, batch = build(args)
    hooked = HookedCLIP.from_hf(model, device=args.device)

    # A second LLaVA object with the same weights stays inside the context for the whole run, so
    # the two forwards can be interleaved; entering the context (which checks the weights) is
    # timed on its own.
    twin = copy.deepcopy(model)
    context = llava.hooked_vision_tower(twin, hooked)
    context.__enter__()
    forward = median_times(
        {"plain": lambda: model(**batch), "hooked": lambda: twin(**batch)}, args.repeats, args.device
    )
    context.__exit__(None, None, None)
    start = time.perf_counter()
    with llava.hooked_vision_tower(model, hooked):
        pass
    entry = time.perf_counter() - start

    (layer,) = llava.feature_layers(model, args.layers)
    names = {act_name("result", j) for j in range(layer)} | {act_name("mlp_out", j) for j in range(layer)}
    images = batch["pixel_values"]
    decompose = median_times(
        {
            "cache": lambda: hooked.run_with_cache(images, names_filter=lambda n: n in names),
            "decompose": lambda: llava.decompose_features(hooked, images, layer=layer),
        },
        args.repeats,
        args.device,
    )
    print(
        f"tower {args.layers}x{args.width}, {args.image}px/{args.patch}, LM {args.lm_layers}x{args.lm_width}, "
        f"batch {args.batch}, {args.device}, hidden_states[{layer}], median of {args.repeats}"
    )
    print(f"{'variant':<22}{'s/call':>10}{'ratio':>9}")
    for name, t in forward.items():
        print(f"{'forward ' + name:<22}{t:>10.4f}{t / forward['plain']:>9.3f}")
    for name, t in decompose.items():
        print(f"{name:<22}{t:>10.4f}{t / decompose['cache']:>9.3f}")
    print(f"entering the context (weight check): {entry:.4f} s, once per context")
    print(f"hooked tower / plain = {forward['hooked'] / forward['plain']:.3f} (target <= 1.05)")
    print(f"decompose / cache every head's per-token output = {decompose['decompose'] / decompose['cache']:.3f}")


if __name__ == "__main__":
    main()
