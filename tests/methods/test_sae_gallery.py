"""Top-activating samples of every latent (hookedclip.methods.sae.gallery): the streaming top-N
equals the brute-force global top-N whatever the chunking (ties included), from a store and from
a model alike; the result saves and loads; a store of another width, hook point or model is
refused.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hookedclip.data import toy_dataset
from hookedclip.data.extract import extract
from hookedclip.identity import ModelMismatch
from hookedclip.methods import sae as S
from hookedclip.names import act_name
from hookedclip.toy.model import images_to_tensor

SETTINGS = settings(deadline=None, max_examples=40, derandomize=True)


def brute_force_top(stats: torch.Tensor, sample_indices: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column: every (value, index) pair sorted by value descending, then index ascending."""
    values, indices = [], []
    for j in range(stats.shape[1]):
        pairs = sorted(zip(stats[:, j].tolist(), sample_indices), key=lambda p: (-p[0], p[1]))[:n]
        values.append([v for v, _ in pairs])
        indices.append([i for _, i in pairs])
    return torch.tensor(values).T, torch.tensor(indices).T


def stream(stats: torch.Tensor, sample_indices: list[int], n: int, chunks: list[int]) -> S.TopNAccumulator:
    acc = S.TopNAccumulator(n, stats.shape[1])
    start, k = 0, 0
    while start < len(stats):
        size = chunks[k % len(chunks)]
        acc.update(stats[start : start + size], torch.tensor(sample_indices[start : start + size]))
        start, k = start + size, k + 1
    return acc


# ---------------------------------------------------------------------------- streaming = brute force
@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 60),
    d_sae=st.integers(1, 7),
    n=st.integers(1, 12),
    chunks=st.lists(st.integers(1, 17), min_size=1, max_size=4),
    levels=st.sampled_from([2, 3, 1000]),
    shuffled=st.booleans(),
)
def test_streaming_top_n_equals_brute_force(seed, rows, d_sae, n, chunks, levels, shuffled):
    """Values from a few levels (2 or 3: ties everywhere) or many; samples arriving in index
    order or shuffled; any chunk sizes, changing from chunk to chunk."""
    g = torch.Generator().manual_seed(seed)
    stats = torch.randint(0, levels, (rows, d_sae), generator=g).float() - 1
    sample_indices = (torch.randperm(rows, generator=g) if shuffled else torch.arange(rows)).mul(3).add(7).tolist()
    acc = stream(stats, sample_indices, n, chunks)
    values, indices = brute_force_top(stats, sample_indices, n)
    assert torch.equal(acc.values, values)
    assert torch.equal(acc.indices, indices)
    assert acc.seen == rows


def test_ties_go_to_the_lower_sample_index_whatever_the_arrival_order():
    stats = torch.zeros(6, 1)
    acc = stream(stats, [50, 40, 30, 20, 10, 0], 3, [1])
    assert acc.indices.flatten().tolist() == [0, 10, 20]


def test_statistic_of_a_spatial_code_is_the_max_or_the_mean_with_zeros():
    codes = torch.tensor([[[0.0, 2.0], [4.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])  # [1 sample, 4 tokens, 2 latents]
    assert S.latent_statistic(codes, "spatial", "max").tolist() == [[4.0, 2.0]]
    assert S.latent_statistic(codes, "spatial", "mean").tolist() == [[1.5, 0.5]]
    assert torch.equal(S.latent_statistic(codes[:, 0], "cls"), codes[:, 0])
    with pytest.raises(ValueError, match="pool must be one of"):
        S.latent_statistic(codes, "spatial", "median")


def test_nan_statistics_are_refused():
    acc = S.TopNAccumulator(2, 3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        acc.update(torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([0]))


# ---------------------------------------------------------------------------- store and model
@pytest.fixture(scope="module")
def store_and_sae(tmp_path_factory, toy_sae):
    model, sae, _, _ = toy_sae
    site = act_name("resid_post", model.cfg.n_layers - 1)
    path = tmp_path_factory.mktemp("store")
    store = extract(model, toy_dataset(96), [f"{site}@0", "embedding"], path, batch_size=32, rows_per_shard=40)
    return model, sae, store


def test_from_store_equals_brute_force_and_the_model_pass(store_and_sae):
    model, sae, store = store_and_sae
    top = S.top_activations_from_store(sae, store, n=10, chunk=33)
    rows = store.rows(f"{act_name('resid_post', model.cfg.n_layers - 1)}@0")
    values, indices = brute_force_top(sae.encode(rows).detach(), store.rows("index").tolist(), 10)
    assert torch.equal(top.values, values) and torch.equal(top.indices, indices)
    assert top.settings == {"layer": -1, "token": "cls", "pool": "max", "samples": 96, "n": 10}
    images = images_to_tensor(toy_dataset(96).world.images(), model.cfg.image_mean, model.cfg.image_std)
    live = S.top_activations(model, sae, images.split(25), n=10)
    torch.testing.assert_close(live.values, top.values, atol=1e-4, rtol=1e-4)
    agree = (live.indices == top.indices) | (live.values == 0)  # dead latents: all zeros, any order is a tie
    assert agree.float().mean() > 0.99


def test_result_saves_loads_and_refuses_another_model(store_and_sae, tmp_path):
    from tests.conftest import tiny_open_clip

    from hookedclip import HookedCLIP

    model, sae, store = store_and_sae
    top = S.top_activations_from_store(sae, store, n=5)
    back = S.TopActivations.load(top.save(tmp_path / "top"), model=model)
    assert torch.equal(back.values, top.values) and torch.equal(back.indices, top.indices)
    assert back.settings == top.settings
    with pytest.raises(ModelMismatch):
        S.TopActivations.load(tmp_path / "top", model=HookedCLIP.from_open_clip(tiny_open_clip(seed=3)))
    text = top.to_csv()
    assert text.splitlines()[0] == "latent,max,mean top 5,top indices" and len(text.splitlines()) == 1 + sae.d_sae
    assert "Top 5 samples of 256 latents" in top.summary()


# ---------------------------------------------------------------------------- bad input
def test_store_of_another_width_is_refused(store_and_sae):
    model, sae, store = store_and_sae
    narrow = S.TopKSAE(S.SAEConfig(16, 32, 4, layer=-1, token="cls"))
    with pytest.raises(ValueError, match="width 16"):
        S.top_activations_from_store(narrow, store, target=f"{act_name('resid_post', model.cfg.n_layers - 1)}@0")
    with pytest.raises(ValueError, match="'embedding' is not the hook point the autoencoder reads"):
        S.top_activations_from_store(sae, store, target="embedding")  # same width, another hook point


def test_store_without_the_hook_point_is_refused(store_and_sae):
    model, sae, store = store_and_sae
    elsewhere = S.TopKSAE(S.SAEConfig(sae.d_in, 32, 4, layer=1, token="cls"), model=model)
    with pytest.raises(ValueError, match=r"holds no residual stream .*layer 1.*hook_resid_post@0"):
        S.top_activations_from_store(elsewhere, store)
    spatial = S.TopKSAE(S.SAEConfig(sae.d_in, 32, 4, layer=-1, token="spatial"), model=model)
    with pytest.raises(ValueError, match="every token"):
        S.top_activations_from_store(spatial, store, n_layers=model.cfg.n_layers)


def test_store_of_another_model_is_refused(store_and_sae):
    from tests.conftest import tiny_open_clip

    from hookedclip import HookedCLIP

    model, sae, store = store_and_sae
    other = HookedCLIP.from_open_clip(tiny_open_clip(seed=3, width=sae.d_in))
    foreign = S.TopKSAE(sae.cfg, model=other)
    foreign.load_state_dict(sae.state_dict())
    with pytest.raises(ModelMismatch, match="another model than the autoencoder"):
        S.top_activations_from_store(foreign, store)


def test_autoencoder_on_a_model_it_was_not_trained_on_is_refused(toy_sae):
    from tests.conftest import tiny_open_clip

    from hookedclip import HookedCLIP

    model, sae, _, _ = toy_sae
    other = HookedCLIP.from_open_clip(tiny_open_clip(seed=3, width=sae.d_in))
    images = torch.zeros(2, 3, other.cfg.vision.image_size, other.cfg.vision.image_size)
    with pytest.raises(ModelMismatch):
        S.top_activations(other, sae, images)


# ---------------------------------------------------------------------------- the command
def test_gallery_command_writes_the_page_and_both_results(store_and_sae, tmp_path):
    """``hookedclip sae gallery`` on a toy store (the toy world found from the store), then with
    another embedding model (a saved tiny CLIP, 16 px inputs: the toy images re-rendered)."""
    from tests.conftest import tiny_open_clip

    from hookedclip import HookedCLIP
    from hookedclip.cli import main

    model, sae, store = store_and_sae
    sae.save(tmp_path / "sae")
    out = tmp_path / "gallery"
    argv = ["sae", "gallery", "--sae", str(tmp_path / "sae"), "--store", str(store.path), "--top", "4"]
    assert main([*argv, "--n", "5", "--keep", "10", "--max-latents", "3", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert page.count("class='latent'") >= 3 and "Semantic outliers" in page and "labels.png" in page
    labels = S.LatentLabels.load(out / "labels", model=model)
    first = int(labels.most_aligned(1))
    assert f"latent {first}: <span class='label'>{labels.label_of(first)}</span>" in page
    for index in labels.top_indices[:4, first].tolist():
        assert f"img/{index}.png" in page and (out / "img" / f"{index}.png").exists()
    top = S.TopActivations.load(out / "top", model=model)
    assert torch.equal(top.values, S.top_activations_from_store(sae, store, n=10).values)

    HookedCLIP.from_open_clip(tiny_open_clip(seed=4, vocab_size=49408, context_length=77)).save(tmp_path / "tiny")
    other = tmp_path / "other"
    assert main([*argv, "--embed-model", str(tmp_path / "tiny"), "--latents", "0", "5", "--out", str(other)]) == 0
    relabelled = S.LatentLabels.load(other / "labels")
    assert relabelled.settings["embedder"] != "the model itself"
    assert (other / "index.html").read_text().count("class='latent'") >= 2


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_spatial_autoencoder_from_store_and_model_equal_brute_force(pool, tmp_path):
    """A spatial autoencoder reads the patch tokens (the class token excluded) of a tiny model."""
    from tests.conftest import tiny_open_clip

    from hookedclip import HookedCLIP

    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=2))
    size = model.cfg.vision.image_size
    images = torch.randn(13, 3, size, size, generator=torch.Generator().manual_seed(1))
    sae = S.TopKSAE(S.SAEConfig(model.cfg.d_model, 24, 3, layer=0, token="spatial"), model=model)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    site = act_name("resid_post", 0)
    _, cache = model.run_with_cache(images, names_filter=site)
    codes = sae.encode(cache[site][:, 1:]).detach()  # [13, patches, 24]
    stats = codes.amax(1) if pool == "max" else codes.mean(1)
    values, indices = brute_force_top(stats, list(range(13)), 6)
    live = S.top_activations(model, sae, images.split(5), n=6, pool=pool)
    torch.testing.assert_close(live.values, values)
    dataset = [{"image": image, "label": 0} for image in images]  # any map-style dataset of preprocessed images
    store = extract(model, dataset, [site], tmp_path / "store", batch_size=4, rows_per_shard=5)
    stored = S.top_activations_from_store(sae, store, n=6, pool=pool, chunk=4)
    torch.testing.assert_close(stored.values, values)
    assert torch.equal(stored.indices, indices) and torch.equal(live.indices, indices)
    assert stored.settings["pool"] == pool and stored.settings["token"] == "spatial"
