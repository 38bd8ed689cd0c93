"""``batches=``: image tensors or (images, labels[, groups]) tuples everywhere; anything else refused."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP
from hookedclip.ablation_curve import mean_ablation_curve
from hookedclip.data.batches import Batch, check_reiterable, iter_images, iter_labelled
from hookedclip.methods import head_moments, pclens
from hookedclip.methods.pclens.recovered import accuracy_recovered
from hookedclip.zeroshot import ZeroShotClassifier, embed_images

GEN = torch.Generator().manual_seed(0)
IMAGES = torch.randn(12, 3, 16, 16, generator=GEN, dtype=torch.float64)
LABELS = torch.randint(0, 3, (12,), generator=GEN)
GROUPS = torch.randint(0, 2, (12,), generator=GEN)


@pytest.fixture(scope="module")
def model():
    return HookedCLIP.from_open_clip(tiny_open_clip(seed=2)).double()


def test_iter_images_accepts_every_form():
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(IMAGES, LABELS), batch_size=5)
    forms = {
        "bare tensor": IMAGES,
        "tensors": IMAGES.split(5),
        "pairs": list(zip(IMAGES.split(5), LABELS.split(5))),
        "triples": list(zip(IMAGES.split(5), LABELS.split(5), GROUPS.split(5))),
        "generator": (x for x in IMAGES.split(5)),
        "DataLoader (lists)": loader,
    }
    for name, batches in forms.items():
        assert torch.equal(torch.cat(list(iter_images(batches))), IMAGES), name


def test_iter_labelled():
    got = list(iter_labelled(zip(IMAGES.split(5), LABELS.split(5), GROUPS.split(5))))
    assert all(isinstance(b, Batch) for b in got)
    assert torch.equal(torch.cat([b.groups for b in got]), GROUPS)
    pairs = list(iter_labelled(zip(IMAGES.split(5), LABELS.split(5))))
    assert pairs[0].groups is None and torch.equal(torch.cat([b.labels for b in pairs]), LABELS)


@pytest.mark.parametrize("reader", [iter_images, iter_labelled])
@pytest.mark.parametrize(
    "batches, error, match",
    [
        ([IMAGES[0]], TypeError, r"batch 0: .*got a tensor of shape \(3, 16, 16\)"),
        ([{"image": IMAGES, "label": LABELS}], TypeError, r"batch 0"),
        ({"image": IMAGES}, TypeError, "batches must be an iterable of image tensors"),
        ("images.png", TypeError, "batches must be an iterable of image tensors"),
        (7, TypeError, "got int"),
        (IMAGES[0], ValueError, r"a bare tensor is one batch of images \[B, C, H, W\]"),
    ],
)
def test_anything_else_is_refused_clearly(reader, batches, error, match):
    with pytest.raises(error, match=match):
        list(reader(batches))


def test_the_errors_say_how_to_fix_it():
    with pytest.raises(TypeError, match=r"batch 1: .*shape \(12,\).*wrap it in a list: \[\(images, labels\)\]"):
        list(iter_images((IMAGES, LABELS)))  # one labelled batch, not a list of them
    with pytest.raises(TypeError, match=r"dict .*pass tuples instead, e.g. \(\(b\['image'\], b\['label'\]\)"):
        list(iter_images([{"image": IMAGES, "label": LABELS}]))
    with pytest.raises(ValueError, match="batch 0 has 12 images but 5 labels"):
        list(iter_labelled([(IMAGES, LABELS[:5])]))
    with pytest.raises(ValueError, match="batch 0 has 12 images but 3 groups"):
        list(iter_labelled([(IMAGES, LABELS, GROUPS[:3])]))


def test_labels_are_required_where_used():
    with pytest.raises(TypeError, match=r"needs labels, so each batch must be a tuple \(images, labels\[, groups\]\)"):
        list(iter_labelled([IMAGES]))
    with pytest.raises(TypeError, match="reads the batches twice"):
        check_reiterable(iter([IMAGES]), "accuracy_recovered")
    check_reiterable([IMAGES], "accuracy_recovered")


def test_methods_take_tensors_and_tuples_alike(model):
    """The same images as bare tensors, (images, labels) pairs and (images, labels, groups)
    triples give the same statistics and embeddings."""
    forms = [
        IMAGES.split(6),
        list(zip(IMAGES.split(6), LABELS.split(6))),
        list(zip(IMAGES.split(6), LABELS.split(6), GROUPS.split(6))),
    ]
    moments = [head_moments(model, b, "L1")[0]["L1H2"] for b in forms]
    fits = [pclens.fit(model, b, components="L1") for b in forms]
    embeddings = [embed_images(model, b) for b in forms]
    for m, f, e in zip(moments[1:], fits[1:], embeddings[1:]):
        torch.testing.assert_close(m.mean, moments[0].mean, rtol=0, atol=0)
        torch.testing.assert_close(f["L1H0"].components, fits[0]["L1H0"].components, rtol=0, atol=0)
        torch.testing.assert_close(e, embeddings[0], rtol=0, atol=0)
    torch.testing.assert_close(embed_images(model, IMAGES), embeddings[0], rtol=0, atol=1e-12)  # one bare batch


def test_labelled_methods_refuse_bare_images_and_one_shot_iterators(model):
    classifier = ZeroShotClassifier(torch.eye(model.cfg.vision.output_dim, 3, dtype=torch.float64), ["a", "b", "c"])
    with pytest.raises(TypeError, match="needs labels"):
        accuracy_recovered(model, [IMAGES], classifier, components="L1", budgets=(1,))
    with pytest.raises(TypeError, match="reads the batches twice"):
        accuracy_recovered(model, zip(IMAGES.split(6), LABELS.split(6)), classifier, components="L1", budgets=(1,))
    with pytest.raises(TypeError, match="needs labels"):
        mean_ablation_curve(model, [IMAGES], classifier, ["L0", "L1"])
    pairs = mean_ablation_curve(model, list(zip(IMAGES.split(6), LABELS.split(6))), classifier, ["L0", "L1"])
    triples = mean_ablation_curve(
        model, list(zip(IMAGES.split(6), LABELS.split(6), GROUPS.split(6))), classifier, ["L0", "L1"]
    )
    assert pairs.accuracy == triples.accuracy
