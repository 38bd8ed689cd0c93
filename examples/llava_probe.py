"""LLaVA encoder probing on the toy LLaVA: run a transformers LLaVA on the hooked toy CLIP, split
the patch tokens it reads into heads and MLPs, and mean-ablate the tower's layers to see what its
answers depend on, next to CLIP's own zero-shot readout of the same ablated stream.

Writes llava_shares.png (attention vs MLP norm shares, patch tokens vs class token) and
llava_ablation.png (answer accuracy and CLIP zero-shot accuracy as blocks are ablated) into --out.

Run: python examples/llava_probe.py [--attribute color] [--n 300] [--out .]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip.methods import llava
from hookedclip.methods.llava.toy_model import ANSWERS, labels_of, toy_images
from hookedclip.toy.splits import test_set
from hookedclip.toy.world import ToyWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--attribute", choices=list(ANSWERS), default="color", help="the question asked (default: %(default)s)"
    )
    parser.add_argument(
        "--n", type=int, default=300, help="the first N images of the canonical world test set (default: %(default)s)"
    )
    parser.add_argument("--out", default=".", help="folder for the figures (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    toy = llava.toy()  # a transformers LlavaForConditionalGeneration on the toy CLIP's tower
    world = test_set("world", args.n)  # the toy world's canonical test set (its first N images)
    images, attributes = toy_images(world.images()), world.attributes()

    # 1. The hooked tower inside the LLaVA: the same logits, and generate works inside.
    plain = toy.next_token_logits(images[:8], args.attribute)
    with llava.hooked_vision_tower(toy.model, toy.clip):
        hooked = toy.next_token_logits(images[:8], args.attribute)
        prompt = toy.prompt(args.attribute, 1)
        generated = toy.model.generate(input_ids=prompt, pixel_values=images[:1], max_new_tokens=1, do_sample=False)
    print(f"max |logit difference| hooked vs plain: {(plain - hooked).abs().max():.2e}")
    print(
        f"image 0: {toy.tokenizer.decode(generated[0, prompt.shape[1] :])!r} "
        f"(truth: {getattr(attributes[0], args.attribute)})"
    )

    # 2. The features LLaVA reads, per token, split into heads and MLPs; then through the projector.
    stack = llava.decompose_features(toy.clip, images, layer=-2)
    shares = llava.norm_shares(stack, layer=3)
    print(shares.summary())
    shares.plot(out / "llava_shares.png", title="Toy LLaVA: what writes the features it reads")
    patches = type(stack)(stack.tensor[:, :, 1:], stack.labels, stack.bias, stack.components)
    projected = llava.through_projector(patches, toy.model.model.multi_modal_projector)
    print(f"projector: tangent sum error {projected.sum_error:.3f}, row vs leave-one-out {projected.row_error:.3f}")

    # 3. Mean-ablate attention, MLPs or both below l: LLaVA's answers vs CLIP zero-shot.
    reference = toy_images(ToyWorld(200, seed=12, split="train").images())
    effects = llava.layer_sweep(
        toy.model,
        toy.clip,
        toy.answer_fn(args.attribute),
        images,
        labels_of(attributes, args.attribute),
        layers=[0, 1, 2, 3],
        reference=reference,
        classifier=toy.classifier(args.attribute),
    )
    print(effects.summary())
    effects.plot(out / "llava_ablation.png", title=f"Toy LLaVA, {args.attribute}: mean-ablating every block below l")


if __name__ == "__main__":
    main()
