"""Training TopK autoencoders: the loss, the recipe, exact resume, divergence, bad input, streaming."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookedclip import HookedCLIP
from hookedclip.data import toy_dataset
from hookedclip.data.extract import extract
from hookedclip.data.store import ActivationStore
from hookedclip.methods import sae as S
from hookedclip.methods.sae.train_data import StoreOrder, StoreSource
from hookedclip.methods.sae.train_log import Metrics

TOKENS = "visual.blocks.3.hook_resid_post"
CLS = TOKENS + "@0"
SMALL = dict(d_sae=64, k=4, batch_size=16, lr=1e-3, log_every=5, checkpoint_every=7, progress=False)


@pytest.fixture(scope="module")
def model():
    return HookedCLIP.from_pretrained("toy").eval()


@pytest.fixture(scope="module")
def store(model, tmp_path_factory) -> ActivationStore:
    path = tmp_path_factory.mktemp("store")
    return extract(model, toy_dataset(192), [TOKENS, CLS], path, batch_size=64, rows_per_shard=64, progress=False)


# ---------------------------------------------------------------------------- the loss
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    d=st.integers(2, 48),
    c1=st.floats(1e-3, 1e3),
    c2=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31 - 1),
)
def test_loss_is_scale_invariant_and_a_cosine(n, d, c1, c2, seed):
    g = torch.Generator().manual_seed(seed)
    recons, h = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    loss = S.cosine_loss(recons, h).double()
    assert torch.allclose(S.cosine_loss(c1 * recons, c2 * h).double(), loss, rtol=1e-5, atol=1e-6)
    per_row = torch.stack([S.cosine_loss(recons[i : i + 1], h[i : i + 1]) for i in range(n)]).double()
    expected = 200 * (1 - F.cosine_similarity(recons, h, dim=-1)) / d
    assert torch.allclose(per_row, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(loss, expected.mean(), rtol=1e-5, atol=1e-6)


def test_the_loss_is_not_a_plain_mse():
    h = torch.randn(4, 8)
    assert S.cosine_loss(2 * h, h) < 1e-6 < F.mse_loss(2 * h, h)


# ---------------------------------------------------------------------------- the recipe
def test_config_defaults_are_the_published_recipe_and_fast_departs():
    cfg = S.TrainConfig()
    assert (cfg.d_sae, cfg.k, cfg.lr, cfg.eps, cfg.weight_decay, cfg.batch_size, cfg.clip_norm) == (
        30000,
        64,
        2e-4,
        1e-7,
        0.01,
        32,
        1.0,
    )
    assert S.TrainConfig(steps=30).milestone_steps() == [24, 28]
    fast = S.TrainConfig.fast(steps=32000)
    assert fast.batch_size > 32 and fast.lr > cfg.lr and fast.steps * fast.batch_size == 32000 * 32
    with pytest.raises(ValueError, match="k = 65 .* d_sae = 64"):
        S.TrainConfig(d_sae=64, k=65)


def test_training_reduces_the_loss_and_schedules_the_lr(store):
    sae, log = S.train(store, CLS, S.TrainConfig(steps=60, **SMALL))
    assert log.loss[-1] < log.loss[0]
    assert log.step[-1] == 60 and log.samples[-1] == 60 * 16
    assert log.lr[0] == pytest.approx(1e-3) and log.lr[-1] == pytest.approx(1e-5)
    assert sae.cfg.layer == 3 and sae.cfg.token == "cls" and sae.model_identity == store.model
    assert 0 < log.final["cosine"] <= 1 and log.final["fvu"] >= 0 and 0 <= log.final["dead_fraction"] <= 1
    assert not sae.training


def test_spatial_rows_are_every_patch_token(store):
    source = StoreSource(store, TOKENS, "spatial", seed=0)
    rows = source.batch(0, 4)
    full = store.rows(TOKENS)[StoreOrder(len(store), 0).rows(0, 4)]
    assert torch.equal(rows, full[:, 1:].reshape(-1, 128))
    assert torch.equal(StoreSource(store, TOKENS, "cls", seed=0).batch(0, 4), full[:, 0])
    sae, log = S.train(store, TOKENS, S.TrainConfig(steps=3, token="spatial", **SMALL))
    assert sae.cfg.token == "spatial" and log.samples[-1] == 3 * 16 * 16


def test_memory_mapped_rows_equal_rows_read_into_memory(store):
    from hookedclip.methods.sae.train_data import ShardedRows

    mapped, loaded = ShardedRows(store, TOKENS, max_memory=0), ShardedRows(store, TOKENS)
    assert mapped.loaded is None and loaded.loaded is not None
    index = torch.tensor([191, 0, 64, 63, 5, 5, 130])  # across the three shards, repeats, any order
    assert torch.equal(mapped.gather(index), loaded.gather(index))
    assert torch.equal(mapped.gather(index), store.rows(TOKENS)[index])


def test_the_data_order_covers_every_row_once_per_epoch():
    order = StoreOrder(10, seed=3)
    first, second = order.rows(0, 10), order.rows(10, 20)
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert not torch.equal(first, second)
    assert torch.equal(order.rows(5, 15), torch.cat([first[5:], second[:5]]))


def test_dead_latents_are_a_true_firing_count():
    metrics = Metrics(d_sae=6, window=4, device=torch.device("cpu"))
    z = torch.zeros(2, 3)
    for seen, fired in ((2, [[0, 1], [1, 2]]), (4, [[3, 3], [3, 3]]), (6, [[4, 4], [4, 4]])):
        metrics.update(torch.tensor(0.0), z, z + 1, torch.ones(2, 2), torch.tensor(fired), seen)
    # the last 4 vectors saw latents 3 and 4 only; 0, 1, 2 fired before, 5 never
    assert metrics.dead_fraction() == pytest.approx(4 / 6)


# ---------------------------------------------------------------------------- properties under training
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lr=st.floats(1e-4, 1.0), seed=st.integers(0, 1000))
def test_atoms_are_unit_norm_after_every_step(store, tmp_path_factory, lr, seed):
    out = tmp_path_factory.mktemp("run")
    cfg = S.TrainConfig(steps=4, seed=seed, **{**SMALL, "lr": lr})
    for step in range(1, 5):
        sae, _ = S.train(store, CLS, cfg, out=out, resume=True, stop_after=step)
        assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(sae.d_sae), atol=1e-6), step


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop=st.integers(1, 19), every=st.integers(0, 8))
def test_an_interrupted_run_resumed_is_bit_identical(store, tmp_path_factory, stop, every):
    tmp_path = tmp_path_factory.mktemp("resume")
    cfg = S.TrainConfig(steps=20, **{**SMALL, "checkpoint_every": every})
    whole, whole_log = S.train(store, CLS, cfg, out=tmp_path / "whole")
    S.train(store, CLS, cfg, out=tmp_path / "parts", stop_after=stop)
    assert torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=False)["step"] == stop
    resumed, resumed_log = S.train(store, CLS, cfg, out=tmp_path / "parts", resume=True)
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert resumed_log.step == whole_log.step and resumed_log.loss == whole_log.loss
    assert S.TopKSAE.load(tmp_path / "parts").W_dec.equal(whole.W_dec)


def test_resume_refuses_another_recipe_and_an_unasked_overwrite(store, tmp_path):
    cfg = S.TrainConfig(steps=6, **SMALL)
    S.train(store, CLS, cfg, out=tmp_path, stop_after=3)
    with pytest.raises(FileExistsError, match="resume"):
        S.train(store, CLS, cfg, out=tmp_path)
    with pytest.raises(ValueError, match="lr: 0.001 -> 0.002"):
        S.train(store, CLS, cfg.with_(lr=2e-3), out=tmp_path, resume=True)


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(store, tmp_path, monkeypatch):
    real = StoreSource.batch

    def poisoned(self, step, *args):
        rows = real(self, step, *args)
        return rows * float("nan") if step == 8 else rows  # the 9th step

    monkeypatch.setattr(StoreSource, "batch", poisoned)
    cfg = S.TrainConfig(steps=20, **{**SMALL, "log_every": 100})
    with pytest.raises(S.TrainingDiverged, match=r"NaN or Inf at step 9.*last good checkpoint \(step 7\)"):
        S.train(store, CLS, cfg, out=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 7 and all(torch.isfinite(t).all() for t in state["sae"].values())


# ---------------------------------------------------------------------------- bad input
def test_a_store_of_another_width_or_hook_point_is_refused(store):
    other = S.TopKSAE(S.SAEConfig(d_in=64, d_sae=32, k=4, layer=3))
    with pytest.raises(ValueError, match="width 64.*width 128"):
        S.train(store, CLS, S.TrainConfig(steps=1, **SMALL), sae=other)
    layer2 = S.TopKSAE(S.SAEConfig(d_in=128, d_sae=32, k=4, layer=2))
    with pytest.raises(ValueError, match="block 2.*block 3"):
        S.train(store, CLS, S.TrainConfig(steps=1, **SMALL), sae=layer2)
    with pytest.raises(ValueError, match="block 1.*block 3"):
        S.train(store, CLS, S.TrainConfig(steps=1, layer=1, **SMALL))
    with pytest.raises(ValueError, match="token='spatial' needs every token"):
        S.train(store, CLS, S.TrainConfig(steps=1, token="spatial", **SMALL))
    with pytest.raises(KeyError, match="holds no target"):
        S.train(store, "visual.blocks.2.hook_resid_post", S.TrainConfig(steps=1, **SMALL))
    with pytest.raises(ValueError, match="several targets"):
        S.train(store, None, S.TrainConfig(steps=1, **SMALL))


def test_a_negative_layer_is_checked_against_the_model(store, model):
    with pytest.raises(ValueError, match="block -2.*block 3"):
        S.train(store, CLS, S.TrainConfig(steps=1, layer=-2, **SMALL), model=model)
    sae, _ = S.train(store, CLS, S.TrainConfig(steps=1, layer=-1, **SMALL), model=model)
    assert sae.cfg.layer == -1


# ---------------------------------------------------------------------------- streaming from the model
def test_training_from_a_running_model_streams_patch_tokens_and_resumes(model, store, tmp_path):
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.world import ToyWorld

    world = ToyWorld(64, seed=0, split="test")
    images = images_to_tensor(world.images(), tuple(model.cfg.image_mean), tuple(model.cfg.image_std))
    batches = [images[i : i + 16] for i in range(0, 64, 16)]
    cfg = S.TrainConfig(steps=6, token="spatial", **SMALL)
    sae, log = S.train((model, batches), cfg=cfg)
    assert sae.cfg.layer == 3 and sae.model_identity is not None and log.samples[-1] == 6 * 16 * 16
    S.train((model, batches), cfg=cfg, out=tmp_path, stop_after=5)  # past one pass over the batches
    resumed, _ = S.train((model, batches), cfg=cfg, out=tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), resumed.state_dict().values()))
    with pytest.raises(ValueError, match="ran out"):
        S.train((model, iter(batches)), cfg=cfg)


# ---------------------------------------------------------------------------- several processes
DDP_CFG = dict(steps=12, **{**SMALL, "checkpoint_every": 0})


def _rank_train(rank: int, world: int, init: str, store_path: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        S.train(store_path, CLS, S.TrainConfig(**DDP_CFG), out=out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(store, tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_rank_train, args=(2, init, str(store.path), str(tmp_path / "two")), nprocs=2, join=True)
    two = S.TopKSAE.load(tmp_path / "two")
    one, one_log = S.train(store, CLS, S.TrainConfig(**DDP_CFG))
    for name, tensor in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(two.W_enc, S.train(store, CLS, S.TrainConfig(**{**DDP_CFG, "seed": 1}))[0].W_enc)
    two_log = S.TrainLog.load(tmp_path / "two" / "train_log.json")
    assert two_log.samples == one_log.samples
    assert two_log.loss == pytest.approx(one_log.loss, rel=1e-4)
    assert two_log.dead_fraction == pytest.approx(one_log.dead_fraction)
