"""The accumulated mean-ablation curve agrees with the ablation contexts."""

from __future__ import annotations

import torch
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP, ablation
from hookedclip.ablation_curve import mean_ablation_curve
from hookedclip.zeroshot import ZeroShotClassifier


def test_curve_matches_contexts(tmp_path):
    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=12)).double()
    gen = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(8, 3, 16, 16, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen))
        for _ in range(2)
    ]
    images = torch.cat([x for x, _ in data])
    labels = torch.cat([y for _, y in data])
    classifier = ZeroShotClassifier(
        torch.nn.functional.normalize(model.encode_image(images[:3]), dim=-1).T, ["a", "b", "c"]
    )
    order = ["embed", "L0", "mlp0", "L1", "mlp1"]
    curve = mean_ablation_curve(model, data, classifier, order)
    assert curve.steps == order and len(curve.accuracy) == 6
    means = ablation.component_means(model, [images], mode="direct")
    for k in range(6):
        with ablation.mean_ablate(model, order[:k], means, mode="direct"):
            acc = (classifier.predict(model.encode_image(images)) == labels).double().mean().item()
        assert abs(curve.accuracy[k] - acc) < 1e-12, k
    # Everything ablated: every image gets the same embedding, so one constant prediction.
    constant = classifier.predict(sum(means.values()).unsqueeze(0)).item()
    assert abs(curve.accuracy[-1] - (labels == constant).double().mean().item()) < 1e-12
    curve.to_csv(tmp_path / "curve.csv")
    assert (tmp_path / "curve.csv").read_text().splitlines()[0] == "n_ablated,last_ablated,accuracy"
    curve.plot(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
