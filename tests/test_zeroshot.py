"""Zero-shot classifier recipe and group metrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP
from hookedclip.zeroshot import ZeroShotClassifier, accuracy, group_accuracies, worst_group_accuracy


@pytest.fixture(scope="module")
def bpe_model() -> HookedCLIP:
    return HookedCLIP.from_open_clip(tiny_open_clip(vocab_size=49408))


def test_classifier_is_mean_of_normalised_templates(bpe_model):
    templates = ["a photo of a {}.", "a {}."]
    clf = ZeroShotClassifier.from_classnames(bpe_model, ["dog", "cat"], templates)
    with torch.no_grad():
        dog = bpe_model.encode_text(bpe_model.tokenize(["a photo of a dog.", "a dog."]), normalize=True)
    torch.testing.assert_close(clf.weights[:, 0], F.normalize(dog.mean(0), dim=-1))
    torch.testing.assert_close(clf.weights.norm(dim=0), torch.ones(2))
    same = ZeroShotClassifier.from_prompts(
        bpe_model, {"dog": ["a photo of a dog.", "a dog."], "cat": ["a photo of a cat.", "a cat."]}
    )
    torch.testing.assert_close(same.weights, clf.weights)


def test_predict_picks_nearest_class():
    weights = torch.eye(3)[:, :2]  # classes along axes 0 and 1
    clf = ZeroShotClassifier(weights, ["a", "b"])
    emb = torch.tensor([[2.0, 1.0, 0.0], [0.1, 5.0, 3.0]])
    assert clf.predict(emb).tolist() == [0, 1]
    with pytest.raises(ValueError, match="class names"):
        ZeroShotClassifier(weights, ["a"])


def test_group_metrics():
    pred = torch.tensor([0, 0, 1, 1, 0, 1])
    label = torch.tensor([0, 1, 1, 1, 0, 0])
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    assert accuracy(pred, label) == pytest.approx(4 / 6)
    assert group_accuracies(pred, label, group) == {0: 0.5, 1: 1.0, 2: 0.5}
    assert worst_group_accuracy(pred, label, group) == 0.5


@pytest.mark.parametrize("templates", ["openai", "simple"])
def test_imagenet_classifier_uses_open_clip_names_and_the_chosen_templates(bpe_model, monkeypatch, templates):
    """Which names and templates go into the recipe (encoding 7,000-80,000 prompts is
    skipped; the recipe itself is tested above)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    from hookedclip.zeroshot import imagenet_classifier

    seen = {}
    monkeypatch.setattr(
        ZeroShotClassifier,
        "from_classnames",
        classmethod(lambda cls, model, names, chosen: seen.update(names=names, templates=chosen)),
    )
    imagenet_classifier(bpe_model, templates) if templates != "openai" else imagenet_classifier(bpe_model)
    expected = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}[templates]
    assert len(seen["names"]) == 1000 and list(seen["names"]) == list(IMAGENET_CLASSNAMES)
    assert tuple(seen["templates"]) == tuple(expected) and len(expected) == {"openai": 80, "simple": 7}[templates]
    assert seen["templates"][0]("goldfish").endswith("goldfish.")
    with pytest.raises(ValueError, match=r"unknown template set 'opanai'; choose one of \['openai', 'simple'\]"):
        imagenet_classifier(bpe_model, templates="opanai")


def test_mean_interval_is_mean_plus_minus_1_96_standard_errors():
    from hookedclip.zeroshot import mean_interval, mean_text

    values = [0.2, 0.4, 0.6, 0.8]
    se = torch.tensor(values, dtype=torch.float64).std().item() / 2
    mean, low, high = mean_interval(values)
    assert mean == pytest.approx(0.5)
    assert (low, high) == pytest.approx((0.5 - 1.959964 * se, 0.5 + 1.959964 * se), abs=1e-6)
    assert mean_interval([0.3]) == (0.3, 0.3, 0.3)
    assert mean_text(values) == f"50.0 [{100 * low:.1f}, {100 * high:.1f}]"
    assert mean_text([-0.1, -0.3], signed=True).startswith("-20.0 [")
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])
