"""The toy LLaVA's recipe: train its projector and language model on toy-world questions with the
toy CLIP's tower frozen, then report held-out answer accuracy next to a linear probe for shape.

The shipped weights (src/hookedclip/methods/llava/weights/) were written by this script with
its defaults, on one CPU thread, in about four minutes.

Run: python examples/train_toy_llava.py [--out toy_llava] [--steps 300]
"""

from __future__ import annotations

import argparse

import torch

from hookedclip.methods.llava.toy_train import RECIPE, train_toy_llava


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="toy_llava", help="folder for the weights and cards (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=RECIPE["steps"], help="training steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=RECIPE["seed"], help="initialisation seed (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, card = train_toy_llava(args.out, {"steps": args.steps, "seed": args.seed})
    print("held-out answer accuracy:", card["accuracy"])
    print("linear probe for shape on the same patch features:", card["shape_probe_accuracy"])


if __name__ == "__main__":
    main()
