"""The canonical held-out sets: one test and one validation set per toy split, the same images
wherever an accuracy is measured."""

from __future__ import annotations

import pytest
import torch

from hookedclip import HookedCLIP
from hookedclip.toy.splits import CANONICAL_SEED, TEST_SIZES, VALIDATION_SIZES, test_set, validation_set
from hookedclip.toy.world import SpuriousSpec, ToyWorld


@pytest.fixture(scope="module")
def toy_model():
    return HookedCLIP.from_pretrained("toy")


def test_canonical_sets_have_the_documented_seed_split_and_size():
    for split in ("world", "spurious"):
        test, val = test_set(split), validation_set(split)
        assert (len(test), test.seed, test.split) == (TEST_SIZES[split], CANONICAL_SEED, "test")
        assert (len(val), val.seed, val.split) == (VALIDATION_SIZES[split], CANONICAL_SEED, "val")
    spurious = test_set("spurious", 8)
    assert spurious.spurious == SpuriousSpec() and spurious.group_balanced
    assert spurious.groups().tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert test_set("world", 4).spurious is None


def test_a_smaller_n_is_the_first_images_of_the_same_set_never_another_sample():
    full, first = test_set("world", 30), test_set("world", 10)
    assert first.attributes() == full.attributes(range(10))
    assert (first.images() == full.images(range(10))).all()
    assert first.attributes() == ToyWorld(10, seed=CANONICAL_SEED, split="test").attributes()


def test_validation_and_test_images_differ():
    test, val = test_set("world", 50).images(), validation_set("world", 50).images()
    shared = {t.tobytes() for t in test} & {v.tobytes() for v in val}
    assert not shared


def test_bad_split_or_size_is_named():
    with pytest.raises(ValueError, match="unknown toy split 'waterbirds'.*world"):
        test_set("waterbirds")
    with pytest.raises(ValueError, match="has 2000 images; give 1..2000"):
        test_set("world", 5000)
    with pytest.raises(ValueError, match="1..1000"):
        validation_set("spurious", 0)


def test_evaluate_and_toy_task_measure_the_same_canonical_images(toy_model):
    """`toy evaluate` (evaluate) and the debias sweep (toy_task) report the same spurious-split
    baseline, because both read the canonical spurious test set."""
    from hookedclip.methods.pclens.debias import toy_task
    from hookedclip.toy.evaluate import evaluate, format_table
    from hookedclip.zeroshot import accuracy, group_accuracies

    result = evaluate(toy_model, n=48)
    task = toy_task(toy_model, n=48)
    with torch.no_grad():
        pred = task.classifier.predict(toy_model.encode_image(task.images))
    per_group = group_accuracies(pred, task.labels, task.groups)
    sp = result["spurious"]
    assert sp["average"] == accuracy(pred, task.labels)
    assert sp["worst_group"] == min(per_group.values())
    assert sp["group_n"] == dict.fromkeys(task.group_names, 12)
    assert result["seed"] == CANONICAL_SEED and result["n"] == 48
    table = format_table(result)
    assert "[95% interval]" in table and table.count("[") >= 6 + 4 + 2
    # a seed draws a fresh sample: other images, so (almost surely) other numbers
    fresh = toy_task(toy_model, n=48, seed=CANONICAL_SEED + 1)
    assert not torch.equal(fresh.images, task.images)
