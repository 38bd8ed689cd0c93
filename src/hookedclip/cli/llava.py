"""``hookedclip llava decompose`` and ``hookedclip llava ablate``.

``decompose`` splits the features a LLaVA reads (the toy LLaVA, or a local Hugging Face LLaVA
folder ``hf:DIR`` with a CLIP vision tower, on toy-world images resized to its tower) into one
row per component and writes the attention vs MLP norm shares of patch tokens against the class
token (``shares.csv``, ``shares.png``, ``summary.txt``; for the toy LLaVA also the projector's
linearisation errors). ``ablate`` mean-ablates the attention, the MLPs or both of every block
below ``l`` of the toy LLaVA's tower and writes its answer accuracy next to CLIP's zero-shot
accuracy on the same stream (``effects.csv``, ``effects.png``, ``summary.txt``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip.cli._common import CommandError, add_held_out_arguments, int_list, positive, step

DECOMPOSE, ABLATE = "hookedclip llava decompose", "hookedclip llava ablate"
ATTRIBUTES = ("shape", "color", "texture", "background")


def _kinds(text: str) -> list[str]:
    from hookedclip.methods.llava import effect

    kinds = [k.strip() for k in text.split(",")]
    bad = [k for k in kinds if k not in effect.KINDS]
    if bad or not kinds:
        raise CommandError(f"--kinds {text!r}: choose from {','.join(effect.KINDS)} (comma-separated)")
    return kinds


def _load(spec: str):
    """``(llava model, hooked model, the toy LLaVA or None)``."""
    from hookedclip.methods import llava

    if spec == "toy":
        toy = llava.toy()
        return toy.model, toy.clip, toy
    if not spec.startswith("hf:"):
        raise CommandError(f"--model {spec!r}: give 'toy' or hf:DIR (a local LLaVA folder written by save_pretrained)")
    folder = Path(spec[3:])
    if not (folder / "config.json").is_file():
        raise CommandError(
            f"{spec}: no Hugging Face model folder at {str(folder)!r} (it needs config.json and weights)"
        )
    import transformers

    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(folder)).eval()
    llava.tower.llava_parts(model)  # a CLIP vision tower, or one line naming its class
    from hookedclip import HookedCLIP

    return model, HookedCLIP.from_hf(model), None


def _images(hooked, n: int, seed: int) -> torch.Tensor:
    """Held-out toy-world images, resized to the tower's input size and normalised with its statistics."""
    import torch.nn.functional as F

    from hookedclip.toy.world import ToyWorld

    world = ToyWorld(n, seed=seed, split="test")
    x = torch.from_numpy(world.images()).permute(0, 3, 1, 2).float().div(255)
    size = hooked.cfg.vision.image_size
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(hooked.cfg.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(hooked.cfg.image_std).view(1, 3, 1, 1)
    return ((x - mean) / std).to(hooked.dtype)


def _cmd_decompose(args: argparse.Namespace) -> None:
    from hookedclip.methods import llava

    torch.set_num_threads(max(1, args.threads))
    with step(DECOMPOSE, f"loading {args.model}"):
        model, hooked, toy = _load(args.model)
    own = llava.feature_layers(model, hooked.cfg.vision.layers)
    layers = own if args.layer is None else [args.layer]
    if len(layers) != 1:
        raise CommandError(f"this LLaVA reads several hidden states {layers}: choose one with --layer")
    n_layers = hooked.cfg.vision.layers
    if not -(n_layers + 1) <= layers[0] <= n_layers:
        raise CommandError(
            f"--layer {layers[0]}: the tower has {n_layers} layers; use --layer -{n_layers + 1} to {n_layers}"
        )
    layer = layers[0] % (n_layers + 1)
    images = _images(hooked, args.n, args.seed)
    with step(DECOMPOSE, f"decomposing hidden_states[{layer}] of {args.n} toy images"):
        stack = llava.decompose_features(hooked, images, layer=layer)
        shares = llava.norm_shares(stack, layer=layer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shares.to_csv(out / "shares.csv")
    shares.plot(out / "shares.png")
    text = shares.summary()
    if own == [layer]:  # the projector reads this layer: push the rows through it
        patches = type(stack)(stack.tensor[:, :, 1:], stack.labels, stack.bias, stack.components)
        projected = llava.through_projector(patches, model.model.multi_modal_projector)
        text += (
            f"\nprojector: linear part exact; activation linearised at the actual pre-activation "
            f"(tangent): sum error {projected.sum_error:.4f}, row vs leave-one-out error {projected.row_error:.4f}"
        )
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"written: {out / 'shares.csv'}, {out / 'shares.png'}, {out / 'summary.txt'}")


def _cmd_ablate(args: argparse.Namespace) -> None:
    from hookedclip.methods import llava
    from hookedclip.methods.llava.toy_model import labels_of, toy_images
    from hookedclip.toy.world import ToyWorld

    layers = int_list(args.layers, "--layers")
    kinds = _kinds(args.kinds)
    if args.model != "toy":
        raise CommandError(
            f"--model {args.model!r}: ablate asks the toy LLaVA its questions; use --model toy "
            "(for another LLaVA, call hookedclip.methods.llava.ablation_effects with your own answer function)"
        )
    torch.set_num_threads(max(1, args.threads))
    with step(ABLATE, "loading the toy LLaVA"):
        toy = llava.toy()
    n_layers = toy.clip.cfg.vision.layers
    if max(layers) > n_layers:
        raise CommandError(f"--layers {args.layers}: the tower has {n_layers} layers; l runs over 0..{n_layers}")
    world = ToyWorld(args.n, seed=args.seed, split="test")
    images, labels = toy_images(world.images()), labels_of(world.attributes(), args.attribute)
    reference = toy_images(ToyWorld(args.n_reference, seed=args.seed + 1, split="train").images())
    with step(ABLATE, f"mean-ablating blocks below l = {layers} ({', '.join(kinds)}) on {args.n} images"):
        effects = llava.layer_sweep(
            toy.model,
            toy.clip,
            toy.answer_fn(args.attribute),
            images,
            labels,
            layers,
            kinds,
            reference=reference,
            classifier=toy.classifier(args.attribute),
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    effects.to_csv(out / "effects.csv")
    effects.plot(out / "effects.png", title=f"Toy LLaVA, {args.attribute}: mean-ablating every block below l")
    (out / "summary.txt").write_text(effects.summary() + "\n")
    print(effects.summary())
    print(f"written: {out / 'effects.csv'}, {out / 'effects.png'}, {out / 'summary.txt'}")


def add_llava_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``hookedclip llava decompose`` and ``hookedclip llava ablate`` on the subparsers."""
    group = subparsers.add_parser("llava", help="LLaVA encoder probing: the features LLaVA reads, and its answers")
    sub = group.add_subparsers(dest="llava_command", required=True, metavar="{decompose,ablate}")
    dec = sub.add_parser("decompose", help="attention vs MLP norm shares of the features LLaVA reads")
    dec.add_argument("--model", default="toy", help="toy (the toy LLaVA) | hf:DIR (a local LLaVA folder)")
    dec.add_argument("--layer", type=int, default=None, help="hidden_states index (default: the LLaVA's own)")
    add_held_out_arguments(dec, 128)
    dec.add_argument("--threads", type=positive, default=1, help="torch CPU threads")
    dec.add_argument("--out", default="llava-decompose", help="output folder")
    dec.set_defaults(func=_cmd_decompose)
    abl = sub.add_parser("ablate", help="mean-ablate blocks below l: LLaVA answers vs CLIP zero-shot")
    abl.add_argument("--model", default="toy", help="toy (the toy LLaVA)")
    abl.add_argument("--attribute", choices=ATTRIBUTES, default="color", help="the question asked")
    abl.add_argument("--layers", default="0,1,2,3", help="values of l (comma list; blocks 0..l-1 are ablated)")
    abl.add_argument("--kinds", default="attn,mlp,both", help="what is ablated (comma list of attn, mlp, both)")
    add_held_out_arguments(abl, 500)
    abl.add_argument("--n-reference", type=positive, default=300, help="other toy images the means come from")
    abl.add_argument("--threads", type=positive, default=1, help="torch CPU threads")
    abl.add_argument("--out", default="llava-ablate", help="output folder")
    abl.set_defaults(func=_cmd_ablate)
    return group
