"""Attribution to autoencoder latents on the toy world, where the truth is known: which latents
carry shape and colour, and the circle-stripes / square-dots correlation planted in the toy
model's training data.

Latents are named here by the attribute value their activation separates best (a stand-in for
the labels a labelling method would give); alignment with a class is the toy world's ground
truth (1 when the label is the class's own shape word, else 0), which plays the part of an
independent text model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hookedclip.methods import sae as S
from hookedclip.toy.attributes import SHAPES
from hookedclip.toy.dataset import SpuriousSpec, ToyWorld
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.text import ATTRIBUTE_WORDS

ATTRIBUTES = ("shape", "color", "texture", "background", "size", "position")
N_IMAGES = 512


def association(a: np.ndarray, values: np.ndarray) -> np.ndarray:
    """η² of each latent's activation with a categorical attribute (0 for latents active < 10 times)."""
    out = np.zeros(a.shape[1])
    for j in range(a.shape[1]):
        col = a[:, j]
        if (col != 0).sum() < 10:
            continue
        total = ((col - col.mean()) ** 2).sum()
        between = sum((values == v).sum() * (col[values == v].mean() - col.mean()) ** 2 for v in set(values))
        out[j] = between / total
    return out


@pytest.fixture(scope="module")
def toy(toy_sae):
    model, sae, world, residuals = toy_sae
    a = sae.encode(residuals).detach().numpy()
    attrs = world.attributes()
    eta = {att: association(a, np.array([getattr(x, att) for x in attrs])) for att in ATTRIBUTES}
    stacked = np.stack([eta[att] for att in ATTRIBUTES])
    kind = [ATTRIBUTES[i] if stacked[i, j] > 0.3 else "" for j, i in enumerate(stacked.argmax(0))]
    labels = []
    for j, att in enumerate(kind):
        if not att:
            labels.append("")
            continue
        values = np.array([getattr(x, att) for x in attrs])
        best = max(set(values), key=lambda v: a[values == v, j].mean())
        labels.append(ATTRIBUTE_WORDS[att][best])
    return model, sae, world, residuals, np.array(kind), labels


def residuals_of(model, world) -> torch.Tensor:
    x = images_to_tensor(world.images(), tuple(model.cfg.image_mean), tuple(model.cfg.image_std))
    with torch.no_grad():
        return model.encode_image(x, stop_at_layer=model.cfg.n_layers)[:, 0]


def per_image_total(attribution, targets, latents: torch.Tensor) -> torch.Tensor:
    """Each image's summed attribution, to its target output, over the given latents."""
    R = attribution.R[torch.arange(attribution.n_images), targets]
    return (R * latents).sum(-1)


@pytest.mark.parametrize("attribute, other", [("shape", "color"), ("color", "shape")])
def test_prompts_of_an_attribute_rank_its_latents_above_the_others(toy, attribute, other):
    model, sae, world, residuals, kind, _ = toy
    values = list(ATTRIBUTE_WORDS[attribute])
    texts = [f"a photo of a {w}." if attribute == "shape" else f"a photo of a {w} shape." for w in values]
    attrs = world.attributes(range(N_IMAGES))
    targets = torch.tensor([values.index(getattr(x, attribute)) for x in attrs])
    attribution = S.attribute(model, sae, residuals=residuals[:N_IMAGES], texts=texts)
    own = per_image_total(attribution, targets, torch.tensor(kind == attribute))
    others = per_image_total(attribution, targets, torch.tensor(kind == other))
    difference = own - others
    assert (kind == attribute).sum() >= 3 and (kind == other).sum() >= 3
    assert difference.mean() > 4 * difference.std() / N_IMAGES**0.5
    top = attribution.R[torch.arange(N_IMAGES), targets].argmax(-1)
    assert (kind[top.numpy()] == attribute).mean() > (kind[top.numpy()] == other).mean()


def test_act_times_grad_deletes_faster_than_logit_lens_and_random(toy):
    model, sae, world, residuals, _, _ = toy
    texts = [f"a photo of a {s}." for s in SHAPES]
    head = S.output_head(model, texts=texts)
    targets = torch.tensor([SHAPES.index(x.shape) for x in world.attributes(range(N_IMAGES))])
    h = residuals[:N_IMAGES]
    scores = S.method_scores(model, sae, h, head, targets)
    for splice in ("recon_only", "error_kept"):
        curves = S.faithfulness(model, sae, scores, head, targets, residuals=h, splice=splice, steps=8)
        auc, err = curves.auc("Act×Grad")
        for baseline in ("LogitLens", "Random"):
            other, other_err = curves.auc(baseline)
            assert auc + 2 * err < other - 2 * other_err, (splice, baseline, curves.auc())
            gap, gap_err = curves.difference("Act×Grad", baseline)
            assert gap < -4 * gap_err


@pytest.fixture(scope="module")
def spurious(toy):
    model, sae, _, _, kind, labels = toy
    world = ToyWorld(N_IMAGES, seed=1, split="test", spurious=SpuriousSpec(), group_balanced=True)
    classes = torch.tensor(world.groups() // 2)  # 0 = circle, 1 = square
    texts = ["a photo of a circle.", "a photo of a square."]
    attribution = S.attribute(model, sae, residuals=residuals_of(model, world), texts=texts, labels=labels)
    return attribution, classes, labels


def test_the_reliance_report_flags_the_planted_background_textures(spurious):
    attribution, classes, labels = spurious
    alignment = torch.tensor([[float(label == c) for c in ("circle", "square")] for label in labels])
    report = S.unexpected_reliance(
        attribution,
        classes,
        alignment,
        class_names=["circle", "square"],
        min_share=0.05,
        max_alignment=0.5,
        test="absolute",
    )
    flagged = {c: {labels[j] for _, j in report.flagged(c)} for c in ("circle", "square")}
    assert "striped" in flagged["circle"] and "dotted" in flagged["square"]
    assert "square" not in flagged["square"]  # the class's own shape latents are expected
    share = S.class_relevance(attribution, classes)
    share = share / share.clamp_min(0).sum(-1, keepdim=True)
    striped = torch.tensor([label == "striped" for label in labels])
    dotted = torch.tensor([label == "dotted" for label in labels])
    assert share[0, striped].sum() > share[1, striped].sum() + 0.1  # stripes help "circle", not "square"
    assert share[1, dotted].sum() > share[0, dotted].sum() + 0.1
    assert all(p["category"] == "unrelated" for p in report.pairs)


def test_latent_augmentation_lowers_the_probes_reliance_on_the_shortcut(toy):
    model, sae, _, _, _, labels = toy
    train = ToyWorld(1024, seed=3, split="train", spurious=SpuriousSpec())
    h, y = residuals_of(model, train), torch.tensor(train.groups() // 2)
    test = ToyWorld(N_IMAGES, seed=4, split="test", spurious=SpuriousSpec(), group_balanced=True)
    h_test = residuals_of(model, test)
    striped = [j for j, label in enumerate(labels) if label == "striped"]
    plain = S.train_probe(S.head_readout(model, h).detach(), y, steps=150, lr=0.1)
    # The shortcut latent is the striped one the plain probe relies on most (Act×Grad on its
    # "circle" logit): with the shipped autoencoder two striped latents share the texture, and
    # resampling the one the probe does not use moves its reliance onto that one instead.
    reliance = S.attribute(model, sae, residuals=h, classifier=plain, output="logit").R[:, 0].mean(0)
    shortcut = max(striped, key=lambda j: float(reliance[j]))
    checks = S.augmentation_checks(model, sae, h, y, shortcut)
    assert checks["identity_error"] == 0.0
    assert abs(checks["correlation_before"]) > 0.5 and abs(checks["correlation_after"]) < 0.1
    augmented = S.train_augmented_probe(model, sae, h, y, shortcut, keep_original=False, steps=150)
    per_image = [
        S.attribute(model, sae, residuals=h_test, classifier=p, output="logit").R[:, 0, shortcut]
        for p in (plain, augmented)
    ]
    drop = per_image[0] - per_image[1]  # on the "circle" logit, paired over the same test images
    assert per_image[0].mean() > 0 and drop.mean() > 4 * drop.std() / N_IMAGES**0.5


def test_the_commands_write_their_files(toy, tmp_path, capsys):
    from hookedclip.cli import main

    _, sae, _, _, _, labels = toy
    sae.save(tmp_path / "sae")
    (tmp_path / "labels.txt").write_text("\n".join(label or "unlabelled" for label in labels))
    common = ["--sae", str(tmp_path / "sae"), "--threads", "1"]
    assert main(["sae", "attribute", *common, "--n", "2", "--out", str(tmp_path / "a")]) == 0
    assert {"index.html", "top.csv", "bars_0.png", "image_1.png"} <= {p.name for p in (tmp_path / "a").iterdir()}
    assert main(["sae", "faithfulness", *common, "--n", "32", "--steps", "3", "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "curves.csv").read_text().startswith("method,auc,auc_stderr,step_0")
    reliance = ["sae", "reliance", *common, "--n", "64", "--labels", str(tmp_path / "labels.txt")]
    assert main([*reliance, "--min-share", "0.05", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "reliance.csv").exists()
    (tmp_path / "short.txt").write_text("one\ntwo")
    assert main([*reliance[:-1], str(tmp_path / "short.txt"), "--out", str(tmp_path / "r2")]) == 2
    assert "2 lines for 256 latents" in capsys.readouterr().err
