"""Zero-shot segmentation (hookedclip.methods.segmentation): the metrics against sklearn and by
hand, the heat maps against a step-by-step computation, on hand-made masks, a tiny random model
and the toy CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from hookedclip.decompose import decompose_image
from hookedclip.methods.segmentation import (
    SegmentationMetrics,
    centre_blob,
    difference_text,
    heatmaps,
    metric_text,
    paired_difference,
    patch_scores,
    resize_mask,
    token_map,
)
from hookedclip.zeroshot import ZeroShotClassifier

SETTINGS = settings(deadline=None, max_examples=30, derandomize=True)


@pytest.fixture
def classifier(tiny_model) -> ZeroShotClassifier:
    gen = torch.Generator().manual_seed(5)
    d = tiny_model.visual.W_proj.shape[1]
    return ZeroShotClassifier(F.normalize(torch.randn(d, 5, generator=gen), dim=0), list("abcde"))


# ---------------------------------------------------------------------------- reference port
def reference_metrics(res_list, gt_list):
    """The reference's per-image steps (Chefer et al.'s utils, used by TextSpan), in NumPy."""
    correct = labeled = 0
    inter, union, aps = np.zeros(2), np.zeros(2), []
    for res, gt in zip(res_list, gt_list):
        res = np.asarray(res, np.float64)
        target = np.asarray(gt, np.int64)
        out = np.stack([(res <= res.mean()), (res > res.mean())]).astype(np.float64)  # [Res_0, Res_1]
        predict = np.argmax(out, 0) + 1
        t = target + 1
        labeled += np.sum(t > 0)
        correct += np.sum((predict == t) * (t > 0))
        predict = predict * (t > 0)
        intersection = predict * (predict == t)
        a_inter, _ = np.histogram(intersection, bins=2, range=(1, 2))
        a_pred, _ = np.histogram(predict, bins=2, range=(1, 2))
        a_lab, _ = np.histogram(t, bins=2, range=(1, 2))
        inter += a_inter
        union += a_pred + a_lab - a_inter
        one_hot = np.stack([1 - target, target]).reshape(-1)
        scores = np.stack([1 - res, res]).reshape(-1)
        aps.append(np.nan_to_num(average_precision_score(one_hot, scores)))
    eps = np.spacing(1)
    return correct / (eps + labeled), (inter / (eps + union)).mean(), float(np.mean(aps))


@st.composite
def masks_and_maps(draw, min_images=1):
    """Random ``(Res [N, H, W], GT [N, H, W])`` with both classes present in every mask."""
    n = draw(st.integers(min_images, 4))
    h, w = draw(st.integers(2, 9)), draw(st.integers(2, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    gt = rng.random((n, h, w)) < draw(st.floats(0.1, 0.9))
    gt[:, 0, 0], gt[:, -1, -1] = True, False
    res = rng.random((n, h, w))
    if draw(st.booleans()):  # quantised maps: ties, as after clipping and upsampling
        res = np.round(res * 4) / 4
    return torch.from_numpy(res), torch.from_numpy(gt)


def metrics_of(res, gt, split: int | None = None) -> dict:
    acc = SegmentationMetrics()
    if split is None:
        acc.update(res, gt)
    else:  # stream in two pieces
        acc.update(res[:split], gt[:split])
        acc.update(res[split:], gt[split:])
    return acc.compute()


# ---------------------------------------------------------------------------- metrics
@SETTINGS
@given(masks_and_maps())
def test_perfect_map_scores_one(case):
    _, gt = case
    m = metrics_of(gt.double(), gt)
    assert m["pixel_accuracy"] == pytest.approx(1.0)
    assert m["miou"] == pytest.approx(1.0)
    assert m["map"] == pytest.approx(1.0)


@SETTINGS
@given(masks_and_maps())
def test_inverted_map_scores_zero(case):
    _, gt = case
    m = metrics_of(1.0 - gt.double(), gt)
    assert m["pixel_accuracy"] == pytest.approx(0.0, abs=1e-12)
    assert m["miou"] == pytest.approx(0.0, abs=1e-12)
    assert m["map"] < 1.0


@SETTINGS
@given(masks_and_maps())
def test_swapping_fg_and_bg_keeps_accuracy_and_miou(case):
    res, gt = case
    res = res + 1e-9 * torch.rand(res.shape, generator=torch.Generator().manual_seed(0))  # no tie at the mean
    a, b = metrics_of(res, gt), metrics_of(1 - res, ~gt)
    assert b["pixel_accuracy"] == pytest.approx(a["pixel_accuracy"], abs=1e-12)
    assert b["miou"] == pytest.approx(a["miou"], abs=1e-12)


@SETTINGS
@given(masks_and_maps(min_images=2), st.integers(1, 3))
def test_metrics_equal_reference_port_streaming(case, split):
    res, gt = case
    split = min(split, len(res) - 1)
    ours = metrics_of(res, gt, split)
    acc, miou, map_ = reference_metrics(res.numpy(), gt.numpy())
    assert ours["pixel_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert ours["miou"] == pytest.approx(miou, abs=1e-12)
    assert ours["map"] == pytest.approx(map_, abs=1e-12)
    assert ours["n_images"] == len(res)


def test_merge_equals_one_pass():
    res, gt = torch.rand(5, 6, 6, generator=torch.Generator().manual_seed(1)), torch.rand(5, 6, 6) > 0.5
    a, b = SegmentationMetrics(), SegmentationMetrics()
    a.update(res[:2], gt[:2])
    b.update(res[2:], gt[2:])
    assert a.merge(b).compute() == metrics_of(res, gt)


@SETTINGS
@given(masks_and_maps(min_images=2))
def test_bootstrap_intervals_bracket_the_metrics_and_are_recomputed_from_per_image_counts(case):
    res, gt = case
    acc = SegmentationMetrics()
    acc.update(res, gt)
    intervals = acc.intervals(n_boot=300)
    for name in ("pixel_accuracy", "miou", "map"):
        low, high = intervals[name]
        assert 0 <= low <= high <= 1
    # with every image resampled the same, the interval of a pooled count collapses to the value
    same = SegmentationMetrics()
    same.update(res[:1].expand(3, -1, -1), gt[:1].expand(3, -1, -1))
    low, high = same.intervals(n_boot=50)["pixel_accuracy"]
    assert low == pytest.approx(same.compute()["pixel_accuracy"]) == pytest.approx(high)
    assert len(acc.per_image) == len(res) and acc.per_image[0][1] == gt[0].numel()


def test_intervals_need_per_image_counts_and_text_shows_them():
    with pytest.raises(ValueError, match="per-image counts"):
        SegmentationMetrics().intervals()
    metrics = {"miou": 0.5731, "intervals": {"miou": (0.55, 0.596)}}
    assert metric_text(metrics, "miou") == "57.3 [55.0, 59.6]"
    assert metric_text({"miou": 0.5731}, "miou") == "57.3"


def _from_counts(per_image: np.ndarray, ap: np.ndarray) -> SegmentationMetrics:
    """An accumulator holding these per-image ``[correct, labelled, ∩bg, ∪bg, ∩fg, ∪fg]`` counts and APs."""
    per_image = np.asarray(per_image, dtype=np.int64)
    totals = per_image.sum(0)
    return SegmentationMetrics(
        int(totals[0]), int(totals[1]), totals[[2, 4]], totals[[3, 5]], ap.tolist(), per_image=per_image.tolist()
    )


def _images(n: int, seed: int, spread: float = 30) -> tuple[np.ndarray, np.ndarray]:
    """Per-image counts of 100-pixel images whose difficulty varies a lot from image to image, and their APs."""
    rng = np.random.default_rng(seed)
    correct = np.clip(rng.normal(70, spread / 2, n), 10, 90).round()
    inter = np.clip(correct // 2 + rng.integers(-5, 5, n), 1, 45)
    counts = np.stack([correct, np.full(n, 100), inter, np.full(n, 50), inter, np.full(n, 50)], 1)
    return counts, np.clip(correct / 100 + rng.normal(0, 0.02, n), 0, 1)


@SETTINGS
@given(masks_and_maps(min_images=2))
def test_paired_difference_of_identical_maps_is_zero_with_a_degenerate_interval(case):
    res, gt = case
    a, b = SegmentationMetrics(), SegmentationMetrics()
    a.update(res, gt)
    b.update(res, gt)
    for name, (value, low, high) in paired_difference(a, b, n_boot=200).items():
        assert value == low == high == 0, name


def test_paired_difference_recovers_a_planted_shift_and_excludes_zero():
    counts, ap = _images(300, seed=0)
    better = counts.copy()
    better[:, 0] += 8  # 8 more correct pixels out of 100 in every image
    better[:, 4] += 5  # and 5 more foreground pixels in the intersection (same union)
    diff = paired_difference(_from_counts(better, ap + 0.05), _from_counts(counts, ap))
    assert diff["pixel_accuracy"][0] == pytest.approx(0.08)
    assert diff["map"][0] == pytest.approx(0.05)
    assert diff["miou"][0] == pytest.approx(
        _from_counts(better, ap).compute()["miou"] - _from_counts(counts, ap).compute()["miou"]
    )
    for name, (value, low, high) in diff.items():
        assert 0 < low <= value <= high, (name, diff[name])
    # the same shift inside the noise: an interval that straddles 0
    noisy = counts.copy()
    noisy[:, 0] = np.clip(noisy[:, 0] + np.random.default_rng(1).integers(-20, 21, len(noisy)), 0, 100)
    value, low, high = paired_difference(_from_counts(noisy, ap), _from_counts(counts, ap))["pixel_accuracy"]
    assert low < 0 < high
    assert difference_text((0.0123, -0.004, 0.0291)) == "+1.2 [-0.4, +2.9]"


def test_paired_interval_is_narrower_than_unpaired_on_correlated_maps():
    """Two maps that find the same images easy: pairing cancels the image-to-image spread."""
    counts, ap = _images(200, seed=2)
    rng = np.random.default_rng(3)
    other = counts.copy()
    other[:, 0] = np.clip(other[:, 0] + rng.integers(-3, 4, len(other)) + 2, 0, 100)
    a, b = _from_counts(other, np.clip(ap + rng.normal(0.01, 0.01, len(ap)), 0, 1)), _from_counts(counts, ap)
    paired, unpaired = paired_difference(a, b), paired_difference(a, b, paired=False)
    for name in ("pixel_accuracy", "map"):
        (v, lo, hi), (v2, lo2, hi2) = paired[name], unpaired[name]
        assert v == v2 and lo <= v <= hi
        assert hi - lo < 0.5 * (hi2 - lo2), (name, paired[name], unpaired[name])


def test_paired_difference_needs_the_same_images():
    counts, ap = _images(20, seed=0)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(_from_counts(counts, ap), _from_counts(counts[:10], ap[:10]))
    with pytest.raises(ValueError, match="per-image counts"):
        paired_difference(SegmentationMetrics(), _from_counts(counts, ap))
    assert paired_difference(_from_counts(counts, ap), _from_counts(counts[:10], ap[:10]), paired=False)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        SegmentationMetrics().update(torch.rand(1, 4, 4), torch.zeros(1, 4, 5, dtype=torch.bool))


# ---------------------------------------------------------------------------- maps
@SETTINGS
@given(st.integers(0, 2**31 - 1))
def test_class_mean_subtraction_ignores_shared_shift(seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(3, 7, 6, generator=gen, dtype=torch.float64)
    shift = torch.randn(3, 7, 1, generator=gen, dtype=torch.float64) * 10
    target = torch.randint(0, 6, (3,), generator=gen)
    torch.testing.assert_close(token_map(scores + shift, target), token_map(scores, target))


def test_token_maps_sum_to_attention_logit(tiny_model, images, classifier):
    """Σ_t (map incl. CLS) = attention part of the ĉ logit minus its class mean (no MLPs)."""
    L, H = tiny_model.visual.cfg.layers, tiny_model.visual.cfg.heads
    scores, predicted = patch_scores(tiny_model, images, classifier)
    per_token = token_map(scores, predicted).sum(1)
    heads = decompose_image(tiny_model, images, positions="cls", components=[f"L0-{L - 1}"])
    attention = heads.tensor[: L * H].sum(0) @ classifier.weights
    expected = attention.gather(1, predicted[:, None])[:, 0] - attention.mean(1)
    torch.testing.assert_close(per_token, expected, rtol=1e-4, atol=1e-6)
    assert predicted.tolist() == classifier.predict(tiny_model.encode_image(images)).tolist()


def direct_heatmaps(model, images, classifier, target=None):
    """The heat maps step by step (token class scores, class-mean subtraction, grid, upsampling,
    clipping, min–max) from one full ``decompose_image(positions="all")``."""
    cfg = model.visual.cfg
    stack = decompose_image(model, images, positions="all")
    heads = stack.select(lambda label: label.startswith("L"))
    s = heads.tensor.sum(0) @ classifier.weights  # [batch, T, C]
    c = classifier.predict(model.encode_image(images)) if target is None else target
    values = torch.stack([s[b, 1:, c[b]] - s[b, 1:].mean(-1) for b in range(len(images))])
    side = cfg.image_size // cfg.patch_size
    up = F.interpolate(values.view(-1, 1, side, side), scale_factor=cfg.patch_size, mode="bilinear")[:, 0]
    up = up.clamp_min(0)
    lo = up.flatten(1).min(1).values.view(-1, 1, 1)
    hi = up.flatten(1).max(1).values.view(-1, 1, 1)
    return (up - lo) / (hi - lo)


def test_heatmaps_equal_direct_computation(tiny_model, images, classifier):
    torch.testing.assert_close(
        heatmaps(tiny_model, images, classifier), direct_heatmaps(tiny_model, images, classifier), rtol=1e-4, atol=1e-5
    )


def test_target_class_is_used(tiny_model, images, classifier):
    target = torch.tensor([4, 0, 2])
    ours = heatmaps(tiny_model, images, classifier, target=target)
    torch.testing.assert_close(ours, direct_heatmaps(tiny_model, images, classifier, target), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(
        heatmaps(tiny_model, images, classifier, target=0), heatmaps(tiny_model, images, classifier, target=1)
    )


def test_heatmap_shape_and_normalisation(tiny_model, images, classifier):
    maps = heatmaps(tiny_model, images, classifier)
    assert maps.shape == (len(images), *images.shape[-2:])
    assert maps.min() >= 0 and maps.max() <= 1
    flat = maps.flatten(1)
    assert torch.all(flat.max(1).values == 1) and torch.all(flat.min(1).values == 0)


def test_transform_plugs_in_per_layer(tiny_model, images, classifier):
    """A transform that keeps one head equals asking for that head alone; identity changes nothing."""
    seen = []

    def keep_l1h2(rows, labels):
        seen.append(list(labels))
        return rows * torch.tensor([float(lbl == "L1H2") for lbl in labels]).view(-1, 1, 1, 1)

    torch.testing.assert_close(
        heatmaps(tiny_model, images, classifier, transform=keep_l1h2),
        heatmaps(tiny_model, images, classifier, components=["L1H2"]),
    )
    H = tiny_model.visual.cfg.heads
    assert seen == [[f"L{l}H{h}" for h in range(H)] for l in range(tiny_model.visual.cfg.layers)]
    torch.testing.assert_close(
        heatmaps(tiny_model, images, classifier, transform=lambda r, _: r), heatmaps(tiny_model, images, classifier)
    )


def test_mlps_write_only_at_cls_for_cls_pooling(tiny_model, images, classifier):
    """MLPs act per position and only CLS is read out, so adding them leaves the patch map."""
    L = tiny_model.visual.cfg.layers
    with_mlps = [f"L0-{L - 1}"] + [f"mlp{l}" for l in range(L)]
    torch.testing.assert_close(
        heatmaps(tiny_model, images, classifier, components=with_mlps),
        heatmaps(tiny_model, images, classifier),
        rtol=1e-5,
        atol=1e-6,
    )


# ---------------------------------------------------------------------------- baseline and geometry
def test_centre_blob_peaks_in_the_middle():
    blob = centre_blob(9, 9, batch=2)
    assert blob.shape == (2, 9, 9)
    assert blob[0, 4, 4] == 1 and blob.min() == 0
    torch.testing.assert_close(blob[0], blob[0].T)
    torch.testing.assert_close(blob[0], blob[0].flip(0))


def test_mask_geometry_reference_vs_aligned():
    mask = torch.zeros(100, 200, dtype=torch.bool)
    mask[:, :50] = True  # left quarter: cut away by the centre crop
    reference, aligned = resize_mask(mask, 20), resize_mask(mask, 20, "aligned")
    assert reference.shape == aligned.shape == (20, 20)
    assert reference[:, :5].all() and not reference[:, 5:].any()
    assert not aligned.any()  # the crop keeps columns 50..150 of the original
    with pytest.raises(ValueError):
        resize_mask(mask, 20, "other")


# ---------------------------------------------------------------------------- toy world
N_TOY = 600


@pytest.fixture(scope="module")
def toy_results():
    from hookedclip import HookedCLIP
    from hookedclip.methods.segmentation import evaluate_toy

    torch.set_num_threads(1)
    model = HookedCLIP.from_pretrained("toy")
    return {
        "all": evaluate_toy(model, n=N_TOY, seed=1),
        "last2": evaluate_toy(model, n=N_TOY, seed=1, components=["L2", "L3"]),
    }


def test_toy_metrics_are_valid(toy_results):
    for run in toy_results.values():
        for metrics in run.values():
            assert metrics["n_images"] == N_TOY
            assert all(0 <= metrics[k] <= 1 for k in ("pixel_accuracy", "miou", "map"))


def test_toy_heads_beat_centre_blob(toy_results):
    """Shipped toy checkpoint, 600 held-out images (seed 1), predicted class. Measured:
    all heads: pixel accuracy 77.4 vs 75.8 for the centred blob, mIoU 57.3 vs 56.9 (within
    noise: on other 200-image samples it is below), mAP 87.5 vs 88.4;
    heads of the last two layers: pixel accuracy 79.4, mIoU 59.5, mAP 88.1.
    Asserted where the margin is clear of sampling noise: pixel accuracy for all heads,
    pixel accuracy and mIoU (>= 1.5 points) for the last two layers. mAP is not better: on a
    4 x 4 patch grid the map ranks pixels more coarsely than a smooth blob. Paired differences
    from the blob (points, 95% paired bootstrap): all heads pixel accuracy +1.7 [+0.6, +2.7];
    last two layers pixel accuracy +3.6 [+2.6, +4.6], mIoU +2.6 [+1.4, +3.9]."""
    every, last2 = toy_results["all"], toy_results["last2"]
    blob = every["blob"]
    for run in (every, last2):  # each run scores its own blob on the same images: the paired difference
        value, low, high = run["model"]["vs_blob"]["pixel_accuracy"]
        assert value == pytest.approx(run["model"]["pixel_accuracy"] - run["blob"]["pixel_accuracy"])
        assert 0 < low <= value <= high, run["model"]["vs_blob"]
    assert last2["model"]["vs_blob"]["miou"][1] > 0, last2["model"]["vs_blob"]
    assert every["model"]["pixel_accuracy"] > blob["pixel_accuracy"] + 0.01, every
    assert last2["model"]["pixel_accuracy"] > blob["pixel_accuracy"] + 0.02, last2
    assert last2["model"]["miou"] > blob["miou"] + 0.015, last2


# ---------------------------------------------------------------------------- figures
def test_blend_leaves_cold_pixels_and_tints_hot_ones():
    from hookedclip.plotting import blend_heatmap

    image = np.full((6, 6, 3), 128, np.uint8)
    heat = np.zeros((6, 6))
    heat[2:4, 2:4] = 1.0
    out = blend_heatmap(image, heat, alpha=0.6)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[heat == 0], image[heat == 0])  # map 0: the image, untouched
    hot = out[heat == 1].astype(int)
    assert np.all(np.abs(hot - 128).max(-1) > 40) and np.all(hot[:, 0] > hot[:, 2])  # jet at 1 is red


def test_heatmap_overlays_file_size_and_content(tmp_path):
    from PIL import Image

    from hookedclip.plotting import heatmap_overlays

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:12, 4:12] = True
    maps = np.zeros((4, 16, 16))
    a = heatmap_overlays(images, maps, masks, tmp_path / "a.png", ["pred: a / true: b"] * 4, cols=2)
    maps[:, 4:12, 4:12] = 1.0
    b = heatmap_overlays(images, maps, masks, tmp_path / "b.png", ["pred: a / true: b"] * 4, cols=2)
    pa, pb = np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b).convert("RGB"))
    assert pa.shape == pb.shape and pa.shape[1] > pa.shape[0]  # 2 rows of 2 pairs (4 panels wide), + legend
    assert (pa != pb).any(axis=-1).mean() > 0.01  # a hot map changes the figure
    assert (np.abs(pb.astype(int) - [0, 255, 255]).sum(-1) < 60).any()  # the cyan binarised contour is drawn


def test_save_overlays_titles_prediction_and_truth(tmp_path, tiny_model, classifier, monkeypatch):
    import hookedclip.plotting as plotting
    from hookedclip.methods.segmentation import save_overlays

    seen = {}

    def capture(images, maps, masks, path, captions=None, cols=6, alpha=0.6):
        seen.update(images=images, maps=maps, captions=captions)
        return path

    monkeypatch.setattr(plotting, "heatmap_overlays", capture)
    pixels = np.random.default_rng(2).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    save_overlays(tiny_model, pixels, classifier, tmp_path / "o.png", labels=[0, 1, 2])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(tiny_model.cfg.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny_model.cfg.image_std).view(1, 3, 1, 1)
    pred = classifier.predict(tiny_model.encode_image((x - mean) / std)).tolist()
    assert seen["captions"] == [f"pred: {'abcde'[p]} / true: {'abcde'[t]}" for p, t in zip(pred, [0, 1, 2])]
    assert seen["maps"].shape == (3, 16, 16) and seen["maps"].max() == pytest.approx(1.0)
    save_overlays(tiny_model, pixels, classifier, tmp_path / "o.png", target=4)
    assert seen["captions"][0] == f"map: e / pred: {'abcde'[pred[0]]}"


def test_save_overlays_writes_a_png(tmp_path, tiny_model, classifier):
    from PIL import Image

    from hookedclip.methods.segmentation import save_overlays

    pixels = np.random.default_rng(3).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((2, 16, 16), bool)
    masks[:, 3:9, 3:9] = True
    path = save_overlays(tiny_model, pixels, classifier, tmp_path / "o.png", masks, labels=[1, 3])
    width, height = Image.open(path).size
    assert width > 2 * height  # one row: two pairs of panels
