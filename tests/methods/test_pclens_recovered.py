"""Accuracy recovered (hookedclip.methods.pclens.recovered) with K PCs or texts per head.

The closed form (coordinates and per-budget read-outs, one decomposition per batch) must
agree with running the model under the ablation / PCLens contexts; its end points are the
mean-ablation baseline (full rank, Π = I) and the everything-mean-ablated floor (K = 0).
Monotonicity in K is not guaranteed (Π_K, TextSpan's greedy order) and is not asserted.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP, ablation
from hookedclip.methods import pclens
from hookedclip.methods.pclens.recovered import (
    _split,
    _statistics,
    accuracy_recovered,
    fit_text_spans,
)
from hookedclip.zeroshot import ZeroShotClassifier

N_CLASSES = 5


@pytest.fixture(scope="module")
def setup():
    """A 3-layer tiny model in float64 (so predictions compare exactly), 96 images in 3
    batches, a random classifier and labels = the model's own predictions, 25% re-drawn."""
    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=5, layers=3)).double()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(96, 3, 16, 16, generator=gen, dtype=torch.float64)
    d = model.cfg.vision.output_dim
    w = torch.nn.functional.normalize(torch.randn(d, N_CLASSES, generator=gen, dtype=torch.float64), dim=0)
    classifier = ZeroShotClassifier(w, [f"c{i}" for i in range(N_CLASSES)])
    with torch.no_grad():
        labels = classifier.predict(model.encode_image(images))
    noisy = torch.rand(96, generator=gen) < 0.25
    labels[noisy] = torch.randint(0, N_CLASSES, (int(noisy.sum()),), generator=gen)
    texts = [f"t{i}" for i in range(40)]
    pool = torch.nn.functional.normalize(torch.randn(40, d, generator=gen, dtype=torch.float64), dim=1)
    data = list(zip(images.split(32), labels.split(32)))
    return model, data, images, labels, classifier, texts, pool


def _accuracy(model, classifier, images, labels) -> float:
    with torch.no_grad():
        return (classifier.predict(model.encode_image(images)) == labels).double().mean().item()


def _exact_pca(model, data, heads):
    analysed, ablated = _split(model, heads)
    moments, _ = _statistics(model, data, analysed, ablated)
    return pclens.fit_from_moments(moments, pclens.model_identity(model), threshold=1.0, max_pcs=None)


def test_full_rank_is_the_baseline_and_zero_is_the_floor(setup):
    model, data, images, labels, classifier, *_ = setup
    result = _exact_pca(model, data, "L1-2")
    full_rank = max(h.k for h in result)
    out = accuracy_recovered(model, data, classifier, components="L1-2", budgets=(0, full_rank), result=result)
    assert out.ablated == [f"L0H{h}" for h in range(4)] and out.n == 96
    # K = full rank, Π = I: X̂ = X, so the analysed heads are intact (the mean-ablation baseline).
    assert out.curves["PCLens"][1] == out.baseline
    means = ablation.component_means(model, [images], ["L0-2"], mode="direct")
    with ablation.mean_ablate(model, "L0", means, mode="direct"):
        assert out.baseline == _accuracy(model, classifier, images, labels)
    # K = 0: every head at its mean.
    with ablation.mean_ablate(model, "L0-2", means, mode="direct"):
        assert out.curves["PCLens"][0] == _accuracy(model, classifier, images, labels)
    assert out.full == _accuracy(model, classifier, images, labels)


def test_all_heads_full_rank_is_the_model(setup):
    model, data, images, labels, classifier, *_ = setup
    result = _exact_pca(model, data, "L0-2")
    out = accuracy_recovered(
        model, data, classifier, components="L0-2", budgets=(max(h.k for h in result),), result=result
    )
    assert out.ablated == []
    assert out.curves["PCLens"][0] == out.baseline == out.full == _accuracy(model, classifier, images, labels)


@pytest.mark.filterwarnings("ignore:TextSpan stopped")
def test_one_budget_matches_the_contexts(setup):
    """PCLens at K = 4 with a 3-text pool (so Π_K is a proper projector, rank < K) equals a
    fit capped at 4 PCs run under ``pclens.keep`` inside the early-layer mean ablation;
    TextSpan at K = 3 equals ``ablation.keep_only`` on its first 3 directions."""
    model, data, images, labels, classifier, texts, pool = setup
    analysed, ablated = _split(model, "L1-2")
    moments, _ = _statistics(model, data, analysed, ablated)
    means = ablation.component_means(model, [images], ["L0"], mode="direct")

    small, small_pool = texts[:3], pool[:3]
    out = accuracy_recovered(
        model,
        data,
        classifier,
        components="L1-2",
        budgets=(0, 4, 50),
        texts=small,
        text_embeddings=small_pool,
        textspan=False,
    )
    capped = pclens.fit_from_moments(
        moments, pclens.model_identity(model), text_embeddings=small_pool, texts=small, n_texts=1, max_pcs=4
    )
    assert any(torch.linalg.matrix_rank(h.projector) < h.k for h in capped)  # Π_K ≠ I is exercised
    with ablation.mean_ablate(model, "L0", means, mode="direct"), pclens.keep(model, capped, capped.pcs()):
        assert out.curves["PCLens"][1] == _accuracy(model, classifier, images, labels)

    out = accuracy_recovered(
        model, data, classifier, components="L1-2", budgets=(0, 3), texts=texts, text_embeddings=pool
    )
    spans = fit_text_spans(moments, pool, texts, 3)
    bases = {label: s.basis for label, s in spans.items()}
    span_means = {label: s.mean for label, s in spans.items()}
    with (
        ablation.mean_ablate(model, "L0", means, mode="direct"),
        ablation.keep_only(model, analysed, bases, span_means, mode="direct"),
    ):
        assert out.curves["TextSpan"][1] == _accuracy(model, classifier, images, labels)
    assert out.curves["PCLens"][0] == out.curves["TextSpan"][0]  # K = 0: the same floor


def test_projector_needs_the_pool(setup):
    model, data, _, _, classifier, texts, pool = setup
    analysed, ablated = _split(model, "L2")
    moments, _ = _statistics(model, data, analysed, ablated)
    labelled = pclens.fit_from_moments(moments, pclens.model_identity(model), text_embeddings=pool, texts=texts)
    with pytest.raises(ValueError, match="text_embeddings"):
        accuracy_recovered(model, data, classifier, components="L2", budgets=(1,), result=labelled)


@pytest.mark.filterwarnings("ignore:TextSpan stopped")
def test_csv_and_plot(setup, tmp_path):
    model, data, _, _, classifier, texts, pool = setup
    out = accuracy_recovered(
        model, data, classifier, components="L2", budgets=(0, 1, 4), texts=texts, text_embeddings=pool
    )
    assert set(out.curves) == {"PCLens", "TextSpan"} and all(len(v) == 3 for v in out.curves.values())
    text = out.to_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert text.splitlines() == lines
    assert lines[0] == "method,budget,accuracy" and len(lines) == 1 + 6 + 2
    assert lines[-1].startswith("full model,,")
    out.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "baseline" in out.summary()
    from hookedclip.zeroshot import accuracy_text

    # every accuracy in the summary carries its 95% Wilson interval on the n images
    assert f"full model {accuracy_text(out.full, out.n)}" in out.summary()
    assert accuracy_text(out.curves["PCLens"][1], out.n) in out.summary()
    with pytest.warns(DeprecationWarning, match=r"summary\(\)"):
        assert out.table() == out.summary()
