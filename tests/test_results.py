"""The Result protocol on every public result type, and the one model identity.

Every result is computed once on the toy CLIP (module fixtures), then saved, loaded, checked
against another model, printed and exported.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from hookedclip import HookedCLIP
from hookedclip.ablation_curve import mean_ablation_curve
from hookedclip.data.store import StoreError
from hookedclip.data.vocab import toy_text_pool
from hookedclip.decompose import ComponentStack, decompose_image
from hookedclip.identity import (
    ModelIdentity,
    ModelMismatch,
    check_same_model,
    model_identity,
    model_label,
)
from hookedclip.methods import pclens
from hookedclip.methods.neighbours import embedding_space, nearest_images
from hookedclip.methods.pclens import PCLensResult, QueryResult, QuerySystem
from hookedclip.methods.pclens.debias import DebiasSweep, sweep_task, toy_task
from hookedclip.methods.pclens.recovered import accuracy_recovered
from hookedclip.methods.segmentation import SegmentationMetrics, heatmaps, toy_batches
from hookedclip.methods.textspan import TextSpanResult, text_span, text_span_heads
from hookedclip.results import Result, ResultFormatError
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.world import ToyWorld, class_prompts
from hookedclip.zeroshot import ZeroShotClassifier, embed_texts

TOY_NAME = "toy/toy-world-v1/82a6581c9135"


@pytest.fixture(scope="module")
def toy() -> HookedCLIP:
    return HookedCLIP.from_pretrained("toy")


@pytest.fixture(scope="module")
def other(toy) -> HookedCLIP:
    """The same architecture with other weights."""
    model = copy.deepcopy(toy)
    with torch.no_grad():
        model.visual.W_proj.add_(1e-2)
    return model


@pytest.fixture(scope="module")
def world_data(toy):
    world = ToyWorld(48, seed=3, split="test", image_size=toy.cfg.vision.image_size)
    images = images_to_tensor(world.images(), toy.cfg.image_mean, toy.cfg.image_std)
    classifier = ZeroShotClassifier.from_prompts(toy, class_prompts("shape"))
    labels = torch.tensor([classifier.classnames.index(a.shape) for a in world.attributes()])
    return world, images, labels, classifier


@pytest.fixture(scope="module")
def results(toy, world_data) -> dict[str, Result]:
    """One instance of every public result type, each computed through its public entry point."""
    world, images, labels, classifier = world_data
    texts = toy_text_pool()
    pool = embed_texts(toy, texts)
    fitted = pclens.fit(toy, images.split(16), components=["L3"], texts=texts, text_embeddings=pool, n_texts=3)
    queries = QuerySystem(fitted, toy)
    task = toy_task(toy, n=32, seed=5)
    segmentation = SegmentationMetrics(model=model_identity(toy))
    for batch, masks in toy_batches(toy, world, batch_size=16):
        segmentation.update(heatmaps(toy, batch, classifier, components="L3"), masks)
    return {
        "textspan": text_span_heads(toy, images.split(16), texts, components=["L3H2"], n_texts=4)["L3H2"],
        "pclens": fitted,
        "headpca": fitted["L3H2"],
        "query": queries.query_text("a red shape", top_k=4, approx=2.0),
        "query_union": queries.query_texts(["a red shape", "a circle"], top_k=3, approx=2.0),
        "recovered": accuracy_recovered(
            toy, [(images, labels)], classifier, components="L3", budgets=(0, 1, 2), texts=texts, text_embeddings=pool
        ),
        "debias": sweep_task(toy, fitted, task, ks=(1, 2)),
        "ablation_curve": mean_ablation_curve(toy, [(images, labels)], classifier, ["L0", "L1", "mlp1"]),
        "segmentation": segmentation,
        "neighbours": nearest_images(toy, images[0], images.split(16), embedding_space(toy), k=5),
        "component_stack": decompose_image(toy, images[:6], components=["L3H2", "mlp3"]),
    }


def n_entries(name: str, result) -> int:
    """The rows ``to_csv`` must write for each result: one per entry."""
    return {
        "textspan": lambda r: len(r),
        "pclens": lambda r: r.n_pcs + r.embedding.k,
        "headpca": lambda r: r.k,
        "query": lambda r: len(r.entries),
        "query_union": lambda r: len(r.entries),
        "recovered": lambda r: len(r.curves) * len(r.budgets) + 2,  # and the baseline and full-model rows
        "debias": lambda r: len(r.points),
        "ablation_curve": lambda r: len(r.accuracy),
        "segmentation": lambda r: 1,  # the dataset's metrics
        "neighbours": lambda r: len(r),
        "component_stack": lambda r: len(r),
    }[name](result)


NAMES = [
    "textspan",
    "pclens",
    "headpca",
    "query",
    "query_union",
    "recovered",
    "debias",
    "ablation_curve",
    "segmentation",
    "neighbours",
    "component_stack",
]


def assert_same_state(a: Result, b: Result) -> None:
    (ta, fa), (tb, fb) = a._state(), b._state()
    assert ta.keys() == tb.keys()
    for name in ta:
        x, y = ta[name], tb[name]
        if x is None or y is None:
            assert x is None and y is None, name
        elif isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and np.array_equal(x, y), name
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), name

    def as_json(fields):
        return json.dumps(fields, sort_keys=True, default=str)

    assert as_json(fa) == as_json(fb)


# --------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_keeps_tensors_fields_and_summary(name, results, toy, tmp_path):
    result = results[name]
    assert result.model == model_identity(toy), "the public entry point records the model"
    path = result.save(tmp_path / name)
    assert sorted(p.name for p in path.iterdir()) == [f"{result._kind}.json", f"{result._kind}.safetensors"]
    loaded = type(result).load(path, model=toy)
    assert_same_state(result, loaded)
    assert loaded.model == result.model and isinstance(loaded.model, ModelIdentity)
    assert loaded.summary() == result.summary()
    assert loaded.to_csv() == result.to_csv()
    assert repr(loaded) == repr(result)
    assert_same_state(result, type(result).load(path))  # without a model: no check


@pytest.mark.parametrize("name", NAMES)
def test_loading_onto_another_model_is_refused(name, results, other, tmp_path):
    result = results[name]
    path = result.save(tmp_path / name)
    with pytest.raises(ModelMismatch, match=f"saved at .*{name}.* computed with {TOY_NAME}.*weights differ"):
        type(result).load(path, model=other)
    with pytest.raises(ModelMismatch, match="weights differ"):
        result.check_model(other)


def test_loaded_results_still_work(results, toy, world_data, tmp_path):
    _, images, _, _ = world_data
    fitted = PCLensResult.load(results["pclens"].save(tmp_path / "p"), model=toy)
    with pclens.keep(toy, fitted, [("L3H2", 0)]):
        a = toy.encode_image(images[:4])
    with pclens.keep(toy, results["pclens"], [("L3H2", 0)]):
        b = toy.encode_image(images[:4])
    assert torch.equal(a, b)
    span = TextSpanResult.load(results["textspan"].save(tmp_path / "t"))
    x = torch.randn(3, span.mean.shape[0])
    assert torch.equal(span.reconstruct(x), results["textspan"].reconstruct(x))
    union = QueryResult.load(results["query_union"].save(tmp_path / "q"))
    assert [c.query for c in union.concepts] == ["a red shape", "a circle"]
    assert union.selection().selected() == results["query_union"].selection().selected()
    sweep = DebiasSweep.load(results["debias"].save(tmp_path / "d"))
    assert sweep.chosen is sweep.points[results["debias"].points.index(results["debias"].chosen)]
    assert all(isinstance(pc, tuple) for p in sweep.points for pc in p.removed)


def test_a_result_without_a_model_loads_but_cannot_be_checked(tmp_path, toy):
    gen = torch.Generator().manual_seed(0)
    span = text_span(torch.randn(20, 8, generator=gen), torch.randn(6, 8, generator=gen), list("abcdef"), 3, rank=None)
    assert span.model is None
    assert "no recorded model" in span.summary()
    path = span.save(tmp_path / "span")
    assert TextSpanResult.load(path).texts == span.texts
    with pytest.raises(ModelMismatch, match="records no model"):
        TextSpanResult.load(path, model=toy)


@dataclass(repr=False)
class _Listed(Result):
    _kind = "listed"
    _tensor_fields = ("values",)
    _json_fields = ("name",)

    values: torch.Tensor
    name: str = "a"
    note: str = "not saved"
    model: ModelIdentity | None = None


@dataclass(repr=False)
class _Derived(_Listed):
    _kind = "derived"
    _json_fields = None


def test_json_fields_default_to_every_field_but_the_tensors_and_the_model(tmp_path):
    """A result that lists no ``_json_fields`` saves every other field; one that lists them saves those."""
    assert _Derived._json_names() == ("name", "note")
    assert _Listed._json_names() == ("name",)
    derived = _Derived.load(_Derived(torch.arange(3.0), "b", "kept").save(tmp_path / "d"))
    assert (derived.name, derived.note) == ("b", "kept") and torch.equal(derived.values, torch.arange(3.0))
    listed = _Listed.load(_Listed(torch.arange(3.0), "b", "dropped").save(tmp_path / "l"))
    assert (listed.name, listed.note) == ("b", "not saved")


def test_loading_the_wrong_kind_or_version_names_the_fix(results, tmp_path):
    path = results["pclens"].save(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="PCLensResult.load"):
        TextSpanResult.load(path)
    with pytest.raises(FileNotFoundError, match="not a folder written by"):
        TextSpanResult.load(tmp_path / "nothing")
    meta = json.loads((path / "pclens.json").read_text())
    (path / "pclens.json").write_text(json.dumps(dict(meta, version=1)))
    with pytest.raises(ResultFormatError, match="v1.*v2.*compute the result again"):
        PCLensResult.load(path)
    (path / "textspan.json").write_text(json.dumps(dict(meta, format="hookedclip.pclens")))
    (path / "textspan.safetensors").write_bytes((path / "pclens.safetensors").read_bytes())
    with pytest.raises(ResultFormatError, match="holds hookedclip.pclens .*load it with PCLensResult.load"):
        TextSpanResult.load(path)


def test_old_stores_are_refused_with_the_fix(tmp_path, toy, world_data):
    from hookedclip.data.extract import extract
    from hookedclip.data.store import ActivationStore

    _, images, _, _ = world_data

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": images[i], "id": str(i)}

    store = extract(toy, Images(), ["embedding"], tmp_path / "s", batch_size=4, progress=False)
    assert store.model == model_identity(toy)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(dict(manifest, format="hookedclip-store/1")))
    with pytest.raises(StoreError, match="extract the store again"):
        ActivationStore(tmp_path / "s")


# --------------------------------------------------------------------------------------
# Printing and exporting
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_repr_is_short_and_names_the_model(name, results):
    result = results[name]
    text = repr(result)
    assert len(text) < 300, text
    assert text.startswith(type(result).__name__ + "(") and TOY_NAME in text
    assert "tensor(" not in text and "array(" not in text
    assert str(result) == result.summary()


@pytest.mark.parametrize("name", NAMES)
def test_csv_has_a_header_and_one_row_per_entry(name, results, tmp_path):
    result = results[name]
    text = result.to_csv()
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    assert header and all(isinstance(h, str) and h for h in header)
    assert len(body) == n_entries(name, result) > 0
    assert all(len(row) == len(header) for row in body)
    assert result.to_csv(tmp_path / "out.csv") == text == (tmp_path / "out.csv").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_summary_is_a_short_table(name, results):
    summary = results[name].summary()
    lines = summary.splitlines()
    assert 2 <= len(lines) <= 30 and "tensor(" not in summary


@pytest.mark.parametrize("name", ["textspan", "pclens", "headpca", "recovered", "debias", "ablation_curve"])
def test_plot_returns_a_figure_and_writes_it_when_asked(name, results, tmp_path):
    fig = results[name].plot()
    assert isinstance(fig, Figure) and fig.axes
    assert results[name].plot(tmp_path / "f.png") is not None
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_figures_stay_outside_pyplot_and_importing_draws_in_no_matplotlib(results, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import matplotlib.pyplot as plt

    import hookedclip
    from hookedclip import plotting

    before = plt.get_fignums()
    results["debias"].plot()
    plotting.image_grid(np.zeros((2, 8, 8, 3), np.uint8), ["a", "b"], tmp_path / "g.png")
    assert plt.get_fignums() == before  # nothing registered with pyplot (no inline copies, nothing to close)
    code = (
        "import sys, hookedclip, hookedclip.results, hookedclip.plotting, hookedclip.methods.pclens, "
        "hookedclip.methods.textspan, hookedclip.methods.segmentation; print('matplotlib' in sys.modules)"
    )
    src = str(Path(hookedclip.__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": src}
    )
    assert out.stdout.strip() == "False"  # matplotlib loads on the first figure, not on import


def test_old_summary_names_warn_and_point_to_summary(results):
    with pytest.warns(DeprecationWarning, match=r"summary\(\)"):
        assert results["recovered"].table() == results["recovered"].summary()
    with pytest.warns(DeprecationWarning, match=r"summary\(\)"):
        assert results["query"].to_markdown().startswith("**a red shape")


def test_text_span_result_prints_without_tensors(results):
    span = results["textspan"]
    assert len(str(span)) < 2000 and span.texts[0] in str(span)


# --------------------------------------------------------------------------------------
# ComponentStack.cat
# --------------------------------------------------------------------------------------


def test_cat_equals_decomposing_the_concatenated_images(toy, world_data):
    _, images, _, _ = world_data
    components = ["L2H3", "L3", "mlp3"]
    parts = [
        decompose_image(toy, images[:5], components=components),
        decompose_image(toy, images[5:12], components=components),
    ]
    joined = ComponentStack.cat(parts)
    whole = decompose_image(toy, images[:12], components=components)
    assert joined.labels == whole.labels and joined.components == whole.components
    assert joined.tensor.shape == whole.tensor.shape
    torch.testing.assert_close(joined.tensor, whole.tensor, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(joined.scale, whole.scale)
    torch.testing.assert_close(joined.sum(), whole.sum(), rtol=1e-5, atol=1e-6)
    assert joined.model == whole.model == model_identity(toy)
    per_token = [decompose_image(toy, images[i : i + 3], positions="all", components=components) for i in (0, 3)]
    torch.testing.assert_close(
        ComponentStack.cat(per_token).tensor,
        decompose_image(toy, images[:6], positions="all", components=components).tensor,
        rtol=1e-5,
        atol=1e-6,
    )


def test_cat_refuses_stacks_that_do_not_fit(toy, other, world_data):
    _, images, _, _ = world_data
    a = decompose_image(toy, images[:3], components=["L3H2"])
    with pytest.raises(ValueError, match="same components"):
        ComponentStack.cat([a, decompose_image(toy, images[3:6], components=["L3H1"])])
    with pytest.raises(ValueError, match="different models"):
        ComponentStack.cat([a, decompose_image(other, images[3:6], components=["L3H2"])])
    with pytest.raises(ValueError, match="normalize"):
        ComponentStack.cat([a, decompose_image(toy, images[3:6], components=["L3H2"], normalize=False)])
    with pytest.raises(ValueError, match="dim='batch'"):
        ComponentStack.cat([a, a], dim="pos")
    with pytest.raises(ValueError, match="at least one"):
        ComponentStack.cat([])


# --------------------------------------------------------------------------------------
# The model identity
# --------------------------------------------------------------------------------------


def test_identity_is_one_for_fp32_and_fp16_copies_and_differs_for_another_model(toy, other):
    from tests.conftest import tiny_open_clip

    identity = model_identity(toy)
    assert set(identity) == {"name", "config_hash", "weights"}
    assert json.loads(json.dumps(identity)) == identity  # JSON-safe
    assert model_identity(copy.deepcopy(toy).half()) == identity
    assert model_identity(copy.deepcopy(toy).double()) == identity
    assert model_identity(HookedCLIP.from_pretrained("toy")) == identity  # loaded again
    assert str(identity) == f"{TOY_NAME} (weights {identity['weights'][:8]})"
    theirs = model_identity(other)
    assert theirs["config_hash"] == identity["config_hash"] and theirs["weights"] != identity["weights"]
    deeper = model_identity(HookedCLIP.from_open_clip(tiny_open_clip(seed=1, layers=3)))
    assert deeper["config_hash"] != identity["config_hash"]


def test_check_same_model_names_both_models(toy, other):
    recorded = model_identity(toy)
    check_same_model(recorded, toy)
    check_same_model(recorded, copy.deepcopy(toy).half())
    check_same_model(recorded, dict(recorded, name="renamed"))  # names are for people, not compared
    with pytest.raises(ModelMismatch) as error:
        check_same_model(recorded, other, "this thing")
    message = str(error.value)
    assert message.startswith("this thing was computed with")
    assert recorded["weights"] in message and model_identity(other)["weights"] in message
    assert "weights differ" in message and "config_hash, weights differ" not in message
    with pytest.raises(ModelMismatch, match="records no model"):
        check_same_model(None, toy)


def test_reports_name_the_model_alike(results, toy):
    name = str(model_identity(toy))
    assert model_label(dict(model_identity(toy))) == name  # a plain dict read back from JSON prints alike
    assert results["pclens"].summary().startswith(f"PCLens on {name}:")
    assert name in results["debias"].summary() and name in results["recovered"].summary()
    assert all(name in results[n].summary() for n in ("textspan", "ablation_curve", "component_stack"))
