"""The toy CLIP's model card: ``MODEL_CARD.md`` written from ``card.json``, every statement derived from it."""

from __future__ import annotations

import inspect
import json
import textwrap

import numpy as np

from hookedclip.zeroshot import accuracy_text


def model_card_markdown(card: dict) -> str:
    """The human-readable model card from ``card.json`` (every statement derived from it)."""
    arch, rec = card["config"], card["recipe"]
    v, t = arch["vision_cfg"], arch["text_cfg"]
    acc, sp, n = card["accuracy"], card["spurious"], card["eval"]["n"]
    rows = "\n".join(f"| {a} | {accuracy_text(acc[a], n)} | {card['chance'][a] * 100:.1f}% |" for a in acc)
    group_n = sp.get("group_n") or {g: sp["n"] // len(sp["groups"]) for g in sp["groups"]}
    groups = "\n".join(f"| {g} | {accuracy_text(x, group_n[g])} |" for g, x in sp["groups"].items())
    worst_n = sp.get("worst_group_n", min(group_n.values()))
    keep = ", ".join(f"{k} {p:g}" for k, p in rec["caption_keep"].items())
    return f"""# Toy CLIP (`HookedCLIP.from_pretrained("toy")`)

A tiny CLIP trained contrastively on hookedclip's procedural toy world (world version
{card["world_version"]}): 32 px images of one coloured shape on a textured background, with
captions from `hookedclip.toy.world.caption`. It is built from open_clip's own classes
(`open_clip.CLIP`) and loaded through `HookedCLIP.from_open_clip`, so it exercises the real
conversion path. It is the default model of the examples, CLI commands and method tests.

Checkpoint `{card["checkpoint_id"]}` (sha256 of `toy_clip.safetensors`: `{card["weights_sha256"][:16]}...`).

## Architecture

- vision: ViT, {v["layers"]} layers, width {v["width"]}, {v["width"] // v["head_width"]} heads, patch {v["patch_size"]} on {v["image_size"]} px ({(v["image_size"] // v["patch_size"]) ** 2} patches + class token)
- text: {t["layers"]} layers, width {t["width"]}, {t["heads"]} heads, context {t["context_length"]}, open_clip `SimpleTokenizer` (vocab {t["vocab_size"]})
- joint embedding: {arch["embed_dim"]} dims; {card["n_params"] / 1e6:.2f} M parameters ({t["vocab_size"]} x {t["width"]} of them in the token embedding)
- images are normalised as `(pixel / 255 - {card["image_mean"][0]}) / {card["image_std"][0]}` per channel:
  `hookedclip.toy.model.images_to_tensor` for toy-world arrays, `model.preprocess` for PIL images.

## Recipe (`hookedclip toy train`, `hookedclip.toy.train.train`)

- data: batch k = items [k*B, (k+1)*B) of `ToyWorld(split="train", seed={card["seed"]})`, rendered on the fly
- captions mention: {keep} (probabilities; shape always)
- hard negatives for shape: {rec["hard_negatives"] * 100:.0f}% of each batch is blocks of the 7 shapes sharing colour,
  background and texture, so that only shape tells them apart
- planted spurious correlation: in training, circles are on stripes and squares on dots in
  {rec["spurious_in_train"]["p_aligned"] * 100:.0f}% of their images (other shapes on every texture)
- {card["steps"]} steps of batch {rec["batch_size"]} ({card["images_seen"]:,} images), AdamW lr {rec["lr"]:g}
  (vision x{rec["vision_lr_mult"]:g}), betas (0.9, 0.98), weight decay {rec["weight_decay"]:g} on matrices only,
  {rec["warmup"]} warm-up steps then cosine decay, logit scale clamped at {rec["max_logit_scale"]:g}
- seed {card["seed"]}; training took {card["train_time_s"] / 60:.1f} min ({card["train_time_s"] / card["steps"]:.2f} s per step) with {_threads(card)} on {card["train_machine"]}; final loss {card["final_loss"]}
- {_command(card)}

## Zero-shot accuracy (canonical world test set `test_set("world")`, n = {n}, seed {card["eval"]["seed"]})

One `ZeroShotClassifier.from_prompts(model, class_prompts(attribute))` per attribute
(`hookedclip.toy.evaluate.evaluate`, `hookedclip toy evaluate`). Brackets: 95% Wilson intervals.

| attribute | accuracy [95% interval] | chance |
|---|---|---|
{rows}

## Spurious split (circle vs square, canonical group-balanced test set `test_set("spurious")`, n = {sp["n"]})

| group | accuracy [95% interval] |
|---|---|
{groups}

Average {accuracy_text(sp["average"], sp["n"])}, worst-group accuracy {accuracy_text(sp["worst_group"], worst_n)} (gap
{sp["gap"] * 100:.1f} points): the shape classifier partly relies on the background texture,
which debiasing methods should remove.

{_curve_table(card)}
## Stored weights

`toy_clip.safetensors` holds the open_clip state dict except the token embedding, of which
only the {card["token_embedding_rows_stored"]} rows that training changed are stored
(`token_embedding.rows` / `token_embedding.values`, fp32); the other rows are exactly their
seeded initialisation and are regenerated at load time (checked against
`token_embedding_sha256` in `card.json`).

## Limits

- It knows only the toy world's words; any other word (e.g. the distractors) has an untrained,
  random embedding row.
- Accuracies are for the 32 px toy world only; it has not seen any other kind of image.
{_quality_bar(card)}"""


_CURVE_COLUMNS = {"sp_avg": "spurious average", "sp_wga": "spurious worst group"}


def curve_sizes(card: dict) -> dict | None:
    """``card["training_curve_eval"]``: how many images each training-curve accuracy was measured
    on (``"n"`` per attribute, ``"n_spurious"`` for the spurious average, ``"spurious_group_n"`` per
    group), or None for a card that does not record it."""
    return card.get("training_curve_eval")


def _curve_n(sizes: dict, column: str) -> int:
    return {"sp_avg": sizes["n_spurious"], "sp_wga": sizes["spurious_group_n"]}.get(column, sizes["n"])


def _curve_point(card: dict, column: str, value: float) -> str:
    """A training-curve accuracy with its 95% Wilson interval, or bare where the size is unknown."""
    sizes = curve_sizes(card)
    return _pct(value) if sizes is None else accuracy_text(value, _curve_n(sizes, column))


def _curve_table(card: dict) -> str:
    """The ``## Training curve`` section: every evaluation during training, each accuracy with its
    interval (on the sizes of ``training_curve_eval``); empty for a run without one."""
    curve = card.get("training_curve") or []
    if not curve:
        return ""
    columns = [c for c in curve[0] if c not in ("step", "time_s", "loss")]
    names = [_CURVE_COLUMNS.get(c, c) for c in columns]
    sizes = curve_sizes(card)
    if sizes is None:
        where = "Held-out images whose number `card.json` does not record, so the figures carry no interval."
    else:
        where = (
            f'{sizes["n"]} held-out images of `ToyWorld(split="{sizes["split"]}", seed={sizes["seed"]})` per '
            f"attribute and {sizes['n_spurious']} of its group-balanced spurious split ({sizes['spurious_group_n']} "
            "per group, so the worst group's interval is the widest), not the test set reported above; "
            "brackets: 95% Wilson intervals."
        )
        if sizes.get("note"):
            where += f" {sizes['note']}"
    rows = "\n".join(
        f"| {e['step']:,} | {e['loss']:.3f} | " + " | ".join(_curve_point(card, c, e[c]) for c in columns) + " |"
        for e in curve
    )
    return f"""## Training curve (`training_curve` in `card.json`)

Zero-shot accuracy during training (`hookedclip toy train --eval-every`), measured on
{textwrap.fill(where, 100, break_on_hyphens=False)}

| step | loss | {" | ".join(names)} |
|---|---|{"---|" * len(names)}
{rows}
"""


QUALITY_BAR = 0.9
QUALITY_BAR_ATTRIBUTES = ("shape", "color", "texture")
_ATTRIBUTE_WORDS = {"color": "colour"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _threads(card: dict) -> str:
    n = card.get("train_threads")
    return "an unrecorded number of torch threads" if n is None else f"{n} torch thread{'s' * (n != 1)}"


def _command(card: dict) -> str:
    """The ``hookedclip toy train`` call that repeats the run, if the CLI can express its recipe."""
    # Imported here: train.py writes its cards with this module.
    from hookedclip.toy.train import DEFAULTS, train

    rec, curve = card["recipe"], card.get("training_curve") or []
    defaults = {k: p.default for k, p in inspect.signature(train).parameters.items()}
    cli_keys = ("steps", "batch_size", "lr", "seed")
    fixed = {k for k in rec if k in defaults and k not in cli_keys}
    if any(json.loads(json.dumps(defaults[k])) != rec[k] for k in fixed if defaults[k] is not None):
        return (
            "the recipe differs from `hookedclip toy train`'s fixed settings: repeat it with "
            "`hookedclip.toy.train.train`"
        )
    args = [f"--{k.replace('_', '-')} {rec[k]:g}" for k in cli_keys if rec[k] != DEFAULTS[k]]
    if curve:
        args.append(f"--eval-every {curve[0]['step']}")
    if card.get("train_threads") is not None:
        args.append(f"--threads {card['train_threads']}")
    return f"repeat it with `{' '.join(['hookedclip toy train'] + args)}`"


def _and(words: list[str]) -> str:
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + f" and {words[-1]}"


def _quality_bar(card: dict) -> str:
    """The quality-bar statement: which attributes reach it, and what limits the others."""
    acc, chance, curve = card["accuracy"], card["chance"], card.get("training_curve") or []
    word = lambda a: _ATTRIBUTE_WORDS.get(a, a)  # noqa: E731
    bar = [a for a in QUALITY_BAR_ATTRIBUTES if a in acc]
    n = card["eval"]["n"]
    reached = [f"{word(a)} ({accuracy_text(acc[a], n)})" for a in bar if acc[a] >= QUALITY_BAR]
    missed = [a for a in bar if acc[a] < QUALITY_BAR]
    text = f"- Quality bar (>= {100 * QUALITY_BAR:.0f}% zero-shot for {_and([word(a) for a in bar])}): "
    text += f"{_and(reached)} reach{'es' * (len(reached) == 1)} it" if reached else "none reaches it"
    if missed:
        text += "; " + "; ".join(f"{word(a)} does not ({accuracy_text(acc[a], n)})" for a in missed)
        text += (
            f". What limits {_and([word(a) for a in missed])} is the training budget: the recipe is sized to "
            f"the target of about 20 minutes on 2 CPU cores ({card['steps']:,} steps; this run took "
            f"{card['train_time_s'] / 60:.1f} min)"
        )
        if curve:
            text += ", and " + "; ".join(_still_rising(card, a) for a in missed) + " (`training_curve` in `card.json`)"
        if card["config"]["vision_cfg"]["patch_size"] == 8 and "shape" in missed:
            text += (
                ". With 4 px patches (64 tokens) shape stayed at chance for 900 steps, even with a supervised "
                "shape head, so the recipe uses 8 px patches (a 4 x 4 grid), which learn shape and train about "
                "4 times faster"
            )
    lines = [text + "."]
    keep = card["recipe"]["caption_keep"]
    lines += [
        f"- {word(a).capitalize()} is learned less well ({accuracy_text(acc[a], n)}, chance {_pct(chance[a])}); captions "
        f"mention it in {100 * keep.get(a, 0):.0f}% of training images."
        for a in acc
        if a not in bar and acc[a] < QUALITY_BAR
    ]
    return "".join(textwrap.fill(line, 100, subsequent_indent="  ") + "\n" for line in lines)


def _still_rising(card: dict, attribute: str) -> str:
    """How ``attribute`` rose during training: a few points of the curve, the best figure, the
    slope over the last sixth of training (least squares, final evaluation included)."""
    steps = card["steps"]
    points = [(e["step"], e[attribute]) for e in card["training_curve"]] + [(steps, card["accuracy"][attribute])]
    shown = sorted({min(points, key=lambda p: abs(p[0] - f * steps)) for f in (1 / 6, 1 / 2, 5 / 6)})
    best_step, best = max(points, key=lambda p: p[1])
    late = [(s, x) for s, x in points if s >= steps * 5 / 6 - 1]
    slope = np.polyfit([s for s, _ in late], [x for _, x in late], 1)[0] if len(late) > 1 else float("nan")
    test_n = card["eval"]["n"]  # the last point is the test-set figure, the others are on the monitoring images
    point = lambda s, x: accuracy_text(x, test_n) if s == steps else _curve_point(card, attribute, x)  # noqa: E731
    text = f"{_ATTRIBUTE_WORDS.get(attribute, attribute)} was at "
    text += ", ".join(f"{point(s, x)} after {s:,} steps" for s, x in shown)
    sizes = curve_sizes(card)
    text += (
        " (on held-out monitoring images, whose number `card.json` does not record: no interval)"
        if sizes is None
        else f" (on {sizes['n']} held-out monitoring images; see the training curve)"
    )
    text += f" and {accuracy_text(card['accuracy'][attribute], card['eval']['n'])} on the test set at the end"
    best_text = "" if best_step == steps else f": {point(best_step, best)} at step {best_step:,}"
    text += f" (its largest figure{best_text})"
    if np.isfinite(slope):
        trend = "still rising" if slope > 0 else "no longer rising"
        text += f", {trend} by {100 * 250 * slope:.1f} points per 250 steps over the last {steps - late[0][0]:,} steps"
    return text
