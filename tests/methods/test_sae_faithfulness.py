"""Deletion and insertion curves (hookedclip.methods.sae.faithfulness), unexpected reliance and
latent augmentation on a tiny random model in float64: the bookkeeping of every step, the
cached fast path against re-running the spliced model, and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP
from hookedclip.methods import sae as S

SETTINGS = settings(deadline=None, max_examples=10, derandomize=True)
WIDTH, D_OUT = 32, 16
F64 = torch.float64


@pytest.fixture(scope="module")
def model() -> HookedCLIP:
    return HookedCLIP.from_open_clip(tiny_open_clip(seed=5, layers=2, width=WIDTH, embed_dim=D_OUT)).double()


@pytest.fixture(scope="module")
def images(model) -> torch.Tensor:
    size = model.cfg.vision.image_size
    return torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=F64)


@pytest.fixture(scope="module")
def head(model):
    prompts = torch.randn(3, D_OUT, generator=torch.Generator().manual_seed(2), dtype=F64)
    return S.output_head(model, text_embeddings=prompts)


def make_sae(model, d_sae=64, k=6, layer=-1, token="cls", seed=0) -> S.TopKSAE:
    sae = S.TopKSAE(S.SAEConfig(WIDTH, d_sae, k, layer=layer, token=token), model=model)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae.double()


def residuals(model, images) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(images, stop_at_layer=model.cfg.n_layers)[:, 0]


def random_scores(n, d_sae, seed=0):
    return torch.randn(n, d_sae, generator=torch.Generator().manual_seed(seed), dtype=F64)


TARGETS = torch.tensor([0, 1, 2, 0, 1, 2])


# ---------------------------------------------------------------------------- bookkeeping
@pytest.mark.parametrize("splice", ["recon_only", "error_kept"])
@pytest.mark.parametrize("source", ["residuals", "images"])
def test_no_step_is_the_spliced_output(model, images, head, splice, source):
    sae = make_sae(model)
    given_ = {"residuals": residuals(model, images)} if source == "residuals" else {"images": images}
    curves = S.faithfulness(model, sae, random_scores(6, 64), head, TARGETS, splice=splice, steps=0, **given_)
    with torch.no_grad(), S.splice(model, sae, splice):
        clean = head(model.encode_image(images))[torch.arange(6), TARGETS]
    torch.testing.assert_close(curves.curves[0, :, 0], 100 * clean)


@pytest.mark.parametrize("splice", ["recon_only", "error_kept"])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_inserting_everything_gives_the_spliced_output(model, images, head, splice, ablation):
    sae = make_sae(model)
    h = residuals(model, images)
    curves = S.faithfulness(
        model,
        sae,
        random_scores(6, 64),
        head,
        TARGETS,
        residuals=h,
        mode="insertion",
        splice=splice,
        ablation=ablation,
        steps=[0.0, 0.5, 1.0],
    )
    with torch.no_grad(), S.splice(model, sae, splice):
        clean = 100 * head(model.encode_image(images))[torch.arange(6), TARGETS]
    torch.testing.assert_close(curves.curves[0, :, -1], clean)
    assert not torch.allclose(curves.curves[0, :, 0], clean)


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["deletion", "insertion"]),
    ablation=st.sampled_from(["zero", "mean"]),
    splice=st.sampled_from(["recon_only", "error_kept"]),
    by_magnitude=st.booleans(),
)
def test_the_cached_path_equals_re_running_the_spliced_model(
    model, images, head, seed, mode, ablation, splice, by_magnitude
):
    sae = make_sae(model, seed=seed)
    kw = dict(mode=mode, ablation=ablation, splice=splice, steps=4, by_magnitude=by_magnitude)
    scores = {"a": random_scores(6, 64, seed), "b": random_scores(6, 64, seed + 1)}
    cached = S.faithfulness(model, sae, scores, head, TARGETS, residuals=residuals(model, images), **kw)
    rerun = S.faithfulness(model, sae, scores, head, TARGETS, images=images, batch_size=4, **kw)
    torch.testing.assert_close(cached.curves, rerun.curves, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 9))
def test_step_i_zeroes_the_top_i_active_latents_by_score(model, images, head, seed, steps):
    sae = make_sae(model, seed=seed)
    h = residuals(model, images)
    scores = random_scores(6, 64, seed)
    curves = S.faithfulness(model, sae, scores, head, TARGETS, residuals=h, steps=steps, active_only=True)
    a = sae.encode(h).detach()
    for b in range(6):
        active = (a[b] != 0).nonzero().squeeze(-1)
        ranked = active[scores[b, active].argsort(descending=True)]
        for i in range(steps + 1):
            code = a[b].clone()
            code[ranked[: min(i, len(ranked))]] = 0  # exactly min(i, #active) latents, the top-i
            y = head(S.head_readout(model, sae.decode(code)))[TARGETS[b]]
            torch.testing.assert_close(curves.curves[0, b, i], 100 * y)
    mean, _ = curves.auc("scores")
    assert mean == pytest.approx(float(curves.curves[0].mean()))


def test_without_active_only_inactive_latents_cost_steps(model, images, head):
    """The reference ordering ranks every latent; a score that favours inactive ones changes nothing."""
    sae = make_sae(model)
    h = residuals(model, images)
    a = sae.encode(h).detach()
    inactive_first = torch.where(a == 0, 1.0, 0.0).to(F64)
    curves = S.faithfulness(model, sae, inactive_first, head, TARGETS, residuals=h, steps=5)
    assert torch.allclose(curves.curves[0], curves.curves[0, :, :1].expand(-1, 6))


def test_fractions_of_the_active_set(model, images, head):
    sae = make_sae(model, k=6)
    h = residuals(model, images)
    full = S.faithfulness(model, sae, random_scores(6, 64), head, TARGETS, residuals=h, steps=6, active_only=True)
    fractions = S.faithfulness(model, sae, random_scores(6, 64), head, TARGETS, residuals=h, steps=[0, 0.5, 1.0])
    torch.testing.assert_close(fractions.curves[0], full.curves[0][:, [0, 3, 6]])


def test_outputs_logit_and_probability(model, images):
    sae = make_sae(model)
    h = residuals(model, images)
    prompts = torch.randn(3, D_OUT, generator=torch.Generator().manual_seed(2), dtype=F64)
    for output in ("logit", "probability"):
        head = S.output_head(model, text_embeddings=prompts, output=output)
        curves = S.faithfulness(model, sae, random_scores(6, 64), head, TARGETS, residuals=h, steps=0)
        expected = head(S.head_readout(model, sae(h, mode="recon_only")))[torch.arange(6), TARGETS]
        torch.testing.assert_close(curves.curves[0, :, 0], expected.detach())
        assert curves.output == output


def test_faithfulness_result_protocol(model, images, head, tmp_path):
    sae = make_sae(model)
    h = residuals(model, images)
    scores = S.method_scores(model, sae, h, head, TARGETS)
    curves = S.faithfulness(model, sae, scores, head, TARGETS, residuals=h, steps=4)
    assert curves.methods == list(scores)
    mean, err = curves.auc("Act×Grad")
    assert err > 0 and curves.curves[0].mean().item() == pytest.approx(mean)
    diff, diff_err = curves.difference("Act×Grad", "Random")
    assert diff == pytest.approx(mean - curves.auc("Random")[0]) and diff_err > 0
    low, high = curves.bootstrap("Act×Grad", n_resamples=200)
    assert low <= mean <= high
    csv = curves.to_csv(tmp_path / "curves.csv").splitlines()
    assert csv[0].startswith("method,auc,auc_stderr,step_0") and len(csv) == 1 + len(scores)
    curves.plot(tmp_path / "curves.png")
    back = S.Faithfulness.load(curves.save(tmp_path / "f"), model=model)
    torch.testing.assert_close(back.curves, curves.curves)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(scores=torch.zeros(6, 63)), ValueError, r"\[n_images, d_sae\] = \[6, 64\]"),
        (dict(scores=torch.zeros(5, 64)), ValueError, r"\[n_images, d_sae\] = \[6, 64\]"),
        (dict(mode="both"), ValueError, "mode must be"),
        (dict(ablation="resample"), ValueError, "ablation must be"),
        (dict(splice="off"), ValueError, "splice must be"),
        (dict(steps=[0.5, 2.0]), ValueError, "fractions"),
        (dict(targets=torch.tensor([0, 1, 2, 3, 0, 0])), ValueError, "targets"),
    ],
)
def test_bad_faithfulness_input_is_named(model, images, head, change, error, message):
    kw = dict(scores=random_scores(6, 64), targets=TARGETS, residuals=residuals(model, images), **{})
    kw.update(change)
    with pytest.raises(error, match=message):
        S.faithfulness(model, make_sae(model), head=head, **kw)


def test_cached_residuals_need_an_autoencoder_before_ln_post(model, images, head):
    with pytest.raises(ValueError, match="right before ln_post"):
        S.faithfulness(model, make_sae(model, layer=0), random_scores(6, 64), head, residuals=residuals(model, images))
    with pytest.raises(ValueError, match="discards"):
        S.faithfulness(model, make_sae(model, token="spatial"), random_scores(6, 64), head, images=images)


def test_a_spatial_autoencoder_at_an_earlier_layer_re_runs_the_model(model, images, head):
    sae = make_sae(model, layer=0, token="spatial")
    curves = S.faithfulness(model, sae, random_scores(6, 64), head, TARGETS, images=images, steps=3)
    with torch.no_grad(), S.splice(model, sae, "recon_only"):
        clean = 100 * head(model.encode_image(images))[torch.arange(6), TARGETS]
    torch.testing.assert_close(curves.curves[0, :, 0], clean)
    assert not torch.allclose(curves.curves[0, :, 3], clean)


# ---------------------------------------------------------------------------- unexpected reliance
def _attribution(model, images, head_texts=2):
    sae = make_sae(model, d_sae=8, k=3)
    prompts = torch.randn(head_texts, D_OUT, generator=torch.Generator().manual_seed(2), dtype=F64)
    labels = [f"word{j}" for j in range(8)]
    return S.attribute(model, sae, images, texts=["cat", "dog"], text_embeddings=prompts, labels=labels)


def test_reliance_flags_relevant_latents_with_low_alignment(model, images):
    attribution = _attribution(model, images)
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    relevance = S.class_relevance(attribution, classes)
    share = relevance / relevance.clamp_min(0).sum(-1, keepdim=True)
    alignment = torch.zeros(8, 2, dtype=F64)
    strongest = int(share[0].argmax())
    alignment[strongest, 0] = 0.9  # the most relevant latent for class 0 fits its class
    report = S.unexpected_reliance(attribution, classes, alignment, min_share=0.05, max_alignment=0.5, test="absolute")
    flagged = report.flagged("cat")
    assert (("cat", strongest) not in flagged) and len(flagged) == int((share[0] >= 0.05).sum()) - 1
    for pair in report.pairs:
        c = attribution.texts.index(pair["class"])
        assert pair["share"] == pytest.approx(float(share[c, pair["latent"]])) and pair["share"] >= 0.05
        assert pair["label"] == f"word{pair['latent']}" and pair["category"] == "unrelated"
        assert all(classes[i] == c for i in pair["images"])
    stricter = S.unexpected_reliance(attribution, classes, alignment, min_share=0.5, max_alignment=0.5, test="absolute")
    assert len(stricter.pairs) <= len(report.pairs)


def test_reliance_z_score_and_lexical_overlap(model, images):
    attribution = _attribution(model, images)
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    alignment = torch.full((8, 2), 0.5, dtype=F64)
    alignment[:, 0] = 0.9  # every latent is more aligned with "cat" than with "dog"
    labels = ["cat toy"] + [f"word{j}" for j in range(1, 8)]
    report = S.unexpected_reliance(attribution, classes, alignment, labels=labels, min_share=0.0, test="z", max_z=0.0)
    assert {p["class"] for p in report.pairs} == {"dog"}  # z(dog) < 0 for every latent, z(cat) > 0
    both = S.unexpected_reliance(attribution, classes, alignment, labels=labels, min_share=0.0, test="both")
    assert both.pairs == []  # no alignment below the absolute threshold
    lexical = S.unexpected_reliance(
        attribution, classes, torch.zeros(8, 2, dtype=F64), labels=labels, min_share=0.0, test="absolute"
    )
    categories = {(p["class"], p["latent"]): p["category"] for p in lexical.pairs}
    assert all(cat == ("lexical" if key == ("cat", 0) else "unrelated") for key, cat in categories.items())


def test_reliance_report_protocol_and_bad_input(model, images, tmp_path):
    attribution = _attribution(model, images)
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    report = S.unexpected_reliance(attribution, classes, torch.zeros(8, 2), min_share=0.0, references=[[1, 2]] * 8)
    assert report.pairs and report.pairs[0]["references"] == [1, 2]
    assert report.to_csv().splitlines()[0].startswith("class,latent,label,share,mean_R,alignment,z,category")
    back = S.RelianceReport.load(report.save(tmp_path / "r"))
    assert back.pairs == report.pairs and back.settings["min_share"] == 0.0
    with pytest.raises(ValueError, match=r"alignment must be \[d_sae, n_classes\] = \[8, 2\]"):
        S.unexpected_reliance(attribution, classes, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="one class per image"):
        S.unexpected_reliance(attribution, classes[:3], torch.zeros(8, 2))
    with pytest.raises(ValueError, match="test must be"):
        S.unexpected_reliance(attribution, classes, torch.zeros(8, 2), test="maybe")


# ---------------------------------------------------------------------------- latent augmentation
def test_augmenting_with_the_same_activation_is_the_identity(model, images):
    sae = make_sae(model)
    h = residuals(model, images)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    latent = int(sae.encode(h)[0].abs().argmax())
    same, _ = S.augmented_embeddings(model, sae, h, labels, latent, values=sae.encode(h)[:, latent].detach())
    assert torch.equal(same, S.head_readout(model, h))
    checks = S.augmentation_checks(model, sae, h, labels, latent)
    assert checks["identity_error"] == 0.0


def test_augmentation_options_keep_their_defaults_and_are_checked(model, images):
    sae = make_sae(model)
    h = residuals(model, images)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    latent = int(sae.encode(h)[0].abs().argmax())
    default, drawn = S.augmented_embeddings(model, sae, h, labels, latent)
    spelled, drawn_spelled = S.augmented_embeddings(model, sae, h, labels, latent, source="all", seed=0)
    assert torch.equal(default, spelled) and torch.equal(drawn, drawn_spelled)
    other, _ = S.augmented_embeddings(model, sae, h, labels, latent, source="other_class", seed=3)
    assert not torch.equal(default, other)
    with pytest.raises(TypeError, match=r"train_augmented_probe\(\) got unexpected option\(s\) \['step'\]"):
        S.train_augmented_probe(model, sae, h, labels, latent, step=5)
    with pytest.raises(TypeError, match="augmented_embeddings"):
        S.augmented_embeddings(model, sae, h, labels, latent, steps=5)  # a probe option, not an augmentation one


@SETTINGS
@given(seed=st.integers(0, 10_000), source=st.sampled_from(["all", "other_class"]))
def test_resampled_values_are_independent_of_the_label(seed, source):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (4000,), generator=gen)
    a = labels.double() * 3 + torch.randn(4000, generator=gen, dtype=F64)  # strongly tied to the label
    drawn = S.resample_values(a, labels, source, seed)
    assert S.label_correlation(a, labels) > 0.7
    if source == "all":
        assert abs(S.label_correlation(drawn, labels)) < 0.06  # ~4 standard errors of a zero correlation
    else:  # each class gets the other's values: the tie is reversed, not kept
        assert S.label_correlation(drawn, labels) < -0.7
    assert set(drawn.tolist()) <= set(a.tolist())


def test_the_augmentation_context_edits_the_forward_pass(model, images):
    sae = make_sae(model)
    h = residuals(model, images)
    latent = int(sae.encode(h)[0].abs().argmax())
    with S.latent_augmentation(model, sae, latent, pool=torch.tensor([2.5])), torch.no_grad():
        inside = model.encode_image(images)
    expected, _ = S.augmented_embeddings(model, sae, h, torch.zeros(6), latent, values=torch.full((6,), 2.5))
    torch.testing.assert_close(inside, expected)
    torch.testing.assert_close(model.encode_image(images), S.head_readout(model, h).detach())  # undone on exit
    with pytest.raises(IndexError, match="latent 64 is out of range"):
        S.latent_augmentation(model, sae, 64, pool=torch.ones(1)).__enter__()
