"""PCLens on the toy CLIP: principal components of each head, labelled with text; the PCs
that carry a concept; and what happens to zero-shot accuracy when they are kept or removed.

One streaming pass over the first ``--n`` images of the canonical world test set
(``hookedclip.toy.splits.test_set("world")``) gives each head's mean and covariance; the PCs,
their labels and the text projector come from those statistics only. Accuracies are printed
with their 95% Wilson intervals.

Run: python examples/pclens.py [--layers 4] [--n 512] [--concept colour]
"""

from __future__ import annotations

import argparse

import torch

from hookedclip import HookedCLIP
from hookedclip.data.vocab import toy_text_pool
from hookedclip.methods import pclens
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.splits import test_set
from hookedclip.toy.world import ATTRIBUTE_WORDS, class_prompts
from hookedclip.zeroshot import ZeroShotClassifier, accuracy, accuracy_text

CONCEPTS = {"colour": ("color", "a {} shape"), "shape": ("shape", "a {}")}


@torch.no_grad()
def zero_shot(model, x: torch.Tensor, classifiers: dict, labels: dict) -> dict[str, float]:
    e = torch.cat([model.encode_image(b) for b in x.split(256)])
    return {name: accuracy(clf.predict(e), labels[name]) for name, clf in classifiers.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--layers", type=int, default=4, help="analyse the heads of the last N layers (default: %(default)s)"
    )
    parser.add_argument(
        "--n",
        type=int,
        default=512,
        help="first N images of the canonical world test set (default: %(default)s; at most 2000)",
    )
    parser.add_argument(
        "--concept",
        choices=list(CONCEPTS),
        default="colour",
        help="the attribute whose PCs are kept and removed (default: %(default)s)",
    )
    parser.add_argument("--top-k", type=int, default=10, help="PCs per concept word (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = HookedCLIP.from_pretrained("toy")
    world = test_set("world", args.n, image_size=model.cfg.vision.image_size)
    x = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    L = model.cfg.vision.layers
    result = pclens.fit(
        model, x.split(256), components=[f"L{L - args.layers}-{L - 1}"], texts=toy_text_pool(), n_texts=3
    )
    print(result, "\n")

    # Which PCs carry the concept? One query per value ("a red shape", ...), de-duplicated.
    attribute, template = CONCEPTS[args.concept]
    words = [template.format(w) for w in ATTRIBUTE_WORDS[attribute].values()]
    qs = pclens.QuerySystem(result, model)
    print(qs.query_text(words[0], top_k=args.top_k), "\n")
    concept = qs.query_texts(words, top_k=args.top_k)
    print(
        f"{args.concept}: {len(concept.pcs)} PCs over {len(concept.heads_used)} heads "
        f"(of {result.n_pcs} PCs in {len(result)} heads)\n"
    )

    attrs = world.attributes()
    labels = {a: torch.tensor([t.labels()[a] for t in attrs]) for a in ("color", "shape")}
    classifiers = {a: ZeroShotClassifier.from_prompts(model, class_prompts(a)) for a in ("color", "shape")}
    rows = {"original": zero_shot(model, x, classifiers, labels)}
    with pclens.keep(model, result, result.pcs()):
        rows["all retained PCs"] = zero_shot(model, x, classifiers, labels)
    with pclens.remove(model, result, concept):
        rows[f"remove {args.concept} PCs"] = zero_shot(model, x, classifiers, labels)
    with pclens.keep(model, result, concept):
        rows[f"keep only {args.concept} PCs"] = zero_shot(model, x, classifiers, labels)
    with pclens.keep(model, result, []):
        rows["mean-ablate analysed heads"] = zero_shot(model, x, classifiers, labels)
    print(f"zero-shot accuracy on the first {args.n} canonical test images [95% Wilson interval]")
    print(f"{'intervention':<28} {'colour':>19} {'shape':>19}")
    for name, acc in rows.items():
        print(f"{name:<28} {accuracy_text(acc['color'], args.n):>19} {accuracy_text(acc['shape'], args.n):>19}")


if __name__ == "__main__":
    main()
