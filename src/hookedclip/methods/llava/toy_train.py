"""The toy LLaVA's recipe: projector and language model trained on toy-world question-answer
pairs with the toy CLIP tower frozen, then measured on held-out images next to a linear probe
on the same patch features.

The tower is frozen, so its features are computed once; each step then runs LLaVA's own
projector, language model and head on them exactly as ``LlavaForConditionalGeneration``
does (the image-token embeddings replaced by the projected features), with the loss on the
answer token of every question.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hookedclip.methods.llava.tower import feature_layers, hidden_states
from hookedclip.methods.llava.toy_model import (
    ANSWERS,
    CARD_FILE,
    FEATURE_LAYER,
    LM_CONFIG,
    QUESTIONS,
    WEIGHTS_FILE,
    ToyLlava,
    WordTokenizer,
    build_llava,
    labels_of,
    toy_images,
    trained_state,
)
from hookedclip.model.hooked import HookedCLIP
from hookedclip.toy.world import ToyWorld

RECIPE = {
    "n_train": 8000,
    "steps": 300,
    "batch_size": 128,
    "lr": 3e-3,
    "warmup": 100,
    "weight_decay": 0.01,
    "seed": 0,
    "world_seed": 0,
}


@torch.no_grad()
def patch_features(llava, clip: HookedCLIP, images: Tensor, batch_size: int = 500) -> Tensor:
    """The patch tokens LLaVA reads ``[n, n_patches, d_model]`` (class token dropped)."""
    (layer,) = feature_layers(llava, clip.cfg.vision.layers)
    parts = [
        hidden_states(clip, images[i : i + batch_size], [layer])[layer][:, 1:]
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


def answer_logits(toy: ToyLlava, features: Tensor, attribute: str) -> Tensor:
    """LLaVA's answer-token logits from precomputed patch features (its own modules, with grad)."""
    llava = toy.model
    inner = llava.model
    ids = toy.prompt(attribute, features.shape[0])
    embeds = inner.language_model.get_input_embeddings()(ids).clone()
    n = toy.n_image_tokens
    embeds[:, 1 : 1 + n] = inner.multi_modal_projector(features)
    hidden = inner.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]
    return llava.lm_head(hidden)


def train_toy_llava(out: str | Path | None = None, recipe: dict | None = None, log=print) -> tuple[ToyLlava, dict]:
    """Train the toy LLaVA; write ``toy_llava.safetensors`` and ``card.json`` into ``out`` if given.

    Returns the trained model and its card (recipe, accuracies on held-out images, the shape
    probe, training time)."""
    from safetensors.torch import save_file

    recipe = {**RECIPE, **(recipe or {})}
    start = time.time()
    clip = HookedCLIP.from_pretrained("toy")
    tokenizer = WordTokenizer.default()
    toy = ToyLlava(build_llava(clip, tokenizer, seed=recipe["seed"]), tokenizer, clip)
    train = ToyWorld(recipe["n_train"], seed=recipe["world_seed"], split="train")
    train_attrs = train.attributes()
    features = patch_features(toy.model, clip, toy_images(train.images()))
    labels = {a: labels_of(train_attrs, a) for a in QUESTIONS}
    answer_tokens = {a: toy.answer_ids(a) for a in QUESTIONS}
    trained = [p for name, p in toy.model.named_parameters() if "vision_tower" not in name]
    for p in trained:
        p.requires_grad_(True)
    optim = torch.optim.AdamW(trained, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    toy.model.train()
    curve = []
    for step in range(recipe["steps"]):
        for group in optim.param_groups:
            group["lr"] = recipe["lr"] * _schedule(step, recipe["steps"], recipe["warmup"])
        idx = torch.randint(0, len(features), (recipe["batch_size"],), generator=gen)
        loss = sum(
            F.cross_entropy(answer_logits(toy, features[idx], a), answer_tokens[a][labels[a][idx]]) for a in QUESTIONS
        )
        optim.zero_grad()
        loss.backward()
        optim.step()
        if (step + 1) % 100 == 0:
            curve.append({"step": step + 1, "loss": round(loss.item() / len(QUESTIONS), 4)})
            log(f"step {step + 1}: loss {curve[-1]['loss']:.4f} ({time.time() - start:.0f} s)")
    for p in trained:
        p.requires_grad_(False)
    toy.model.eval()
    train_s = time.time() - start
    held_out = held_out_scores(toy, clip, features, labels["shape"])
    card = {
        "name": "toy_llava",
        "recipe": recipe,
        "language_model": LM_CONFIG,
        "vision_feature_layer": FEATURE_LAYER,
        "vision_feature_select_strategy": "default",
        "vocabulary": tokenizer.words,
        "questions": QUESTIONS,
        **held_out,
        "train_time_s": round(train_s, 1),
        "train_machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "training_curve": curve,
    }
    toy.card = card
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file(trained_state(toy.model), str(out / WEIGHTS_FILE))
        (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (out / "MODEL_CARD.md").write_text(model_card(card))
    return toy, card


def held_out_scores(toy: ToyLlava, clip: HookedCLIP, train_features: Tensor, train_shapes: Tensor) -> dict:
    """``accuracy`` per question and ``shape_probe_accuracy`` on the toy world's canonical test set
    (:func:`hookedclip.toy.splits.test_set`, the images every toy accuracy is reported on), and its size."""
    from hookedclip.toy.splits import test_set

    test = test_set("world")
    images, attrs = toy_images(test.images()), test.attributes()
    probe = shape_probe(
        train_features, train_shapes, patch_features(toy.model, clip, images), labels_of(attrs, "shape")
    )
    return {"accuracy": evaluate(toy, images, attrs), "shape_probe_accuracy": probe, "n_test": len(test)}


def model_card(card: dict) -> str:
    """``MODEL_CARD.md`` from ``card.json``."""
    from hookedclip.zeroshot import accuracy_text

    acc, n = card["accuracy"], card["n_test"]
    rows = "\n".join(f"| {a} | {QUESTIONS[a]} | {accuracy_text(acc[a], n)} |" for a in QUESTIONS)
    lm = card["language_model"]
    return f"""# The toy LLaVA

A `transformers` `LlavaForConditionalGeneration` for offline tests and demos of
`hookedclip.methods.llava`, loaded with `llava.toy()`.

- **Vision tower**: the shipped toy CLIP's image tower (4 layers x 4 heads, width 128, 32 px
  images, 16 patches), frozen and rebuilt from the toy CLIP's weights (not stored here).
  LLaVA reads `hidden_states[{card["vision_feature_layer"]}]` (the stream entering the last block), class token
  dropped (`vision_feature_select_strategy="{card["vision_feature_select_strategy"]}"`).
- **Projector**: LLaVA's two-layer GELU MLP, 128 -> {lm["hidden_size"]} -> {lm["hidden_size"]}.
- **Language model**: Llama, {lm["num_hidden_layers"]} layers, {lm["num_attention_heads"]} heads, \
width {lm["hidden_size"]}, MLP {lm["intermediate_size"]}, a word-level vocabulary of {len(card["vocabulary"])} words.
- **Prompt**: `<bos> <image> x 16 question`; the answer is the next token (one word).
- **Training**: {card["recipe"]["steps"]} AdamW steps of {card["recipe"]["batch_size"]} images x 4 questions on \
{card["recipe"]["n_train"]} toy-world training images, {card["train_time_s"]:.0f} s on {card["train_machine"]}
  (`hookedclip.methods.llava.toy_train.train_toy_llava`, recipe in `card.json`).

## Answer accuracy on the canonical world test set ({card["n_test"]} images, `hookedclip.toy.splits.test_set("world")`)

| attribute | question | accuracy (95% Wilson interval) |
|---|---|---|
{rows}

A logistic-regression probe on the same patch features (all 16 tokens, flattened; fitted on the
training images) reads the shape with accuracy {accuracy_text(card["shape_probe_accuracy"], n)}.
"""


def _schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def evaluate(toy: ToyLlava, images: Tensor, attributes, batch_size: int = 250) -> dict[str, float]:
    """Answer accuracy per question on ``images`` (greedy answer, through LLaVA's own forward)."""
    out = {}
    for a in QUESTIONS:
        answers = torch.cat([toy.answer(images[i : i + batch_size], a)[0] for i in range(0, len(images), batch_size)])
        out[a] = round(float((answers == labels_of(attributes, a)).float().mean()), 4)
    return out


def shape_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """Held-out accuracy of a logistic-regression probe on the flattened patch features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.1))
    clf.fit(train_x.flatten(1).double().numpy(), train_y.numpy())
    return round(float(clf.score(test_x.flatten(1).double().numpy(), np.asarray(test_y))), 4)


__all__ = ["ANSWERS", "RECIPE", "evaluate", "patch_features", "shape_probe", "train_toy_llava"]
