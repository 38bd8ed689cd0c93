"""Old argument names (``heads=``, ``data=``, ``tokens=``, ...) still work for one release: they warn,
naming the new one, and give the same result."""

from __future__ import annotations

import warnings

import pytest
import torch
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP
from hookedclip._compat import renamed_arguments
from hookedclip.ablation_curve import mean_ablation_curve
from hookedclip.decompose import decompose_image, estimate_memory, plan_chunks, stack_from_cache
from hookedclip.methods import head_moments, pclens, textspan
from hookedclip.methods.neighbours import embedding_space, nearest_images
from hookedclip.methods.pclens.recovered import accuracy_recovered, model_parts
from hookedclip.zeroshot import ZeroShotClassifier

GEN = torch.Generator().manual_seed(0)
IMAGES = torch.randn(12, 3, 16, 16, generator=GEN, dtype=torch.float64)
LABELS = torch.randint(0, 3, (12,), generator=GEN)
BATCHES = list(zip(IMAGES.split(6), LABELS.split(6)))


@pytest.fixture(scope="module")
def model():
    return HookedCLIP.from_open_clip(tiny_open_clip(seed=2, vocab_size=49408)).double()


@pytest.fixture(scope="module")
def classifier(model):
    d = model.cfg.vision.output_dim
    weights = torch.nn.functional.normalize(torch.randn(d, 3, generator=GEN, dtype=torch.float64), dim=0)
    return ZeroShotClassifier(weights, ["a", "b", "c"])


def old_and_new(call_old, call_new, old: str, new: str, n_old: int = 1):
    """Both results; the old call must warn once per old name (``n_old``), naming ``old=`` and ``new=``."""
    with pytest.warns(DeprecationWarning, match=rf"\({old}=\.\.\.\) is deprecated.*use {new}=") as record:
        before = call_old()
    assert len([w for w in record if w.category is DeprecationWarning]) == n_old
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new name does not warn
        after = call_new()
    return before, after


def test_the_helper():
    @renamed_arguments(old="new", n=("spec", lambda n: f"L-{n}-"))
    def f(new=None, spec=None):
        return new, spec

    with pytest.warns(DeprecationWarning, match=r"f\(old=\.\.\.\) is deprecated and will be removed; use new="):
        assert f(old=3) == (3, None)
    with pytest.warns(DeprecationWarning, match="use spec="):
        assert f(n=2) == (None, "L-2-")
    with pytest.raises(TypeError, match=r"got both old= \(deprecated\) and new=; pass only new="):
        f(old=1, new=2)
    assert f.__name__ == "f" and f(new=1) == (1, None)


def test_tokens_is_positions(model):
    a, b = old_and_new(
        lambda: decompose_image(model, IMAGES[:2], tokens="all", components="L1"),
        lambda: decompose_image(model, IMAGES[:2], positions="all", components="L1"),
        "tokens",
        "positions",
    )
    assert a.tensor.shape[2] == model.cfg.vision.n_tokens and torch.equal(a.tensor, b.tensor)
    with model.cache() as cache:
        emb = model.encode_image(IMAGES[:2])
    a, b = old_and_new(
        lambda: stack_from_cache(model, "visual", IMAGES[:2], dict(cache), emb, tokens="all"),
        lambda: stack_from_cache(model, "visual", IMAGES[:2], dict(cache), emb, positions="all"),
        "tokens",
        "positions",
    )
    assert torch.equal(a.tensor, b.tensor)
    a, b = old_and_new(
        lambda: estimate_memory(model, 4, tokens="all"),
        lambda: estimate_memory(model, 4, positions="all"),
        "tokens",
        "positions",
    )
    assert a == b > estimate_memory(model, 4, positions="cls")
    a, b = old_and_new(
        lambda: plan_chunks(model, 4, tokens="all", max_memory=10**9),
        lambda: plan_chunks(model, 4, positions="all", max_memory=10**9),
        "tokens",
        "positions",
    )
    assert a == b


def test_data_and_heads_in_accuracy_recovered(model, classifier):
    a, b = old_and_new(
        lambda: accuracy_recovered(model, data=BATCHES, classifier=classifier, heads="L1", budgets=(0, 2)),
        lambda: accuracy_recovered(model, BATCHES, classifier, components="L1", budgets=(0, 2)),
        "(?:data|heads)",
        "(?:batches|components)",
        n_old=2,
    )
    assert a.curves == b.curves and a.heads == b.heads == [f"L1H{h}" for h in range(4)] and a.ablated == b.ablated
    parts_old, parts_new = old_and_new(
        lambda: list(model_parts(model, data=BATCHES, heads=["L1H0"], ablated=["L0H0"])),
        lambda: list(model_parts(model, batches=BATCHES, components=["L1H0"], ablated=["L0H0"])),
        "(?:data|heads)",
        "(?:batches|components)",
        n_old=2,
    )
    for old, new in zip(parts_old, parts_new):
        assert all(torch.equal(x, y) for x, y in zip(old, new))


def test_heads_alone_warns_naming_components(model, classifier):
    a, b = old_and_new(
        lambda: accuracy_recovered(model, BATCHES, classifier, heads="L1", budgets=(1,)),
        lambda: accuracy_recovered(model, BATCHES, classifier, components="L1", budgets=(1,)),
        "heads",
        "components",
    )
    assert a.curves == b.curves


def test_data_in_fit_and_text_span_heads(model):
    a, b = old_and_new(
        lambda: pclens.fit(model, data=BATCHES, components="L1"),
        lambda: pclens.fit(model, batches=BATCHES, components="L1"),
        "data",
        "batches",
    )
    assert all(torch.equal(x.components, y.components) for x, y in zip(a, b))
    texts = ["a dog", "a cat", "a red car", "a tree", "the sea", "a house"]
    a, b = old_and_new(
        lambda: textspan.text_span_heads(model, data=BATCHES, texts=texts, components="L1H0", n_texts=2),
        lambda: textspan.text_span_heads(model, BATCHES, texts, components="L1H0", n_texts=2),
        "data",
        "batches",
    )
    assert a["L1H0"].texts == b["L1H0"].texts


def test_data_in_mean_ablation_curve(model, classifier):
    a, b = old_and_new(
        lambda: mean_ablation_curve(model, data=BATCHES, classifier=classifier, components_order=["L0"]),
        lambda: mean_ablation_curve(model, BATCHES, classifier, ["L0"]),
        "data",
        "batches",
    )
    assert a.accuracy == b.accuracy


def test_image_batches_in_nearest_images(model):
    space = embedding_space(model)
    a, b = old_and_new(
        lambda: nearest_images(model, IMAGES[0], image_batches=IMAGES.split(5), space=space, k=3),
        lambda: nearest_images(model, IMAGES[0], batches=IMAGES.split(5), space=space, k=3),
        "image_batches",
        "batches",
    )
    assert torch.equal(a.indices, b.indices) and int(a.indices[0]) == 0


def test_old_moment_functions_warn_and_agree(model):
    per_head, emb = head_moments(model, IMAGES.split(6), "L1")
    with pytest.warns(DeprecationWarning, match="use hookedclip.methods.head_moments"):
        streamed, streamed_emb = pclens.stream_moments(model, IMAGES.split(6), list(per_head))
    with pytest.warns(DeprecationWarning, match="use hookedclip.methods.head_moments"):
        labels, stacked = textspan.head_moments(model, IMAGES.split(6), "L1")
    assert labels == list(per_head) == list(streamed)
    for i, label in enumerate(labels):
        assert torch.equal(streamed[label].m2, per_head[label].m2) and torch.equal(stacked.m2[i], per_head[label].m2)
    assert torch.equal(streamed_emb.mean, emb.mean)
    with pytest.warns(DeprecationWarning, match="components.select"):
        assert pclens.analysed_heads(model, "L-1") == [f"L1H{h}" for h in range(4)]
