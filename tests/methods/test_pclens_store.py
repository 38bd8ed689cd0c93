"""PCLens and TextSpan from an ActivationStore equal the same fits on the images."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP
from hookedclip.data.extract import extract
from hookedclip.identity import model_identity
from hookedclip.methods import head_moments, pclens
from hookedclip.methods.textspan import text_span_from_moments, text_span_from_store


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "id": str(i)}

    def fingerprint(self) -> str:
        return f"random-{len(self)}"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    torch.set_num_threads(1)
    model = HookedCLIP.from_open_clip(tiny_open_clip(seed=3, layers=3)).double()
    images = torch.randn(70, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = model.cfg.vision.output_dim
    pool = torch.nn.functional.normalize(
        torch.randn(30, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64), dim=1
    )
    texts = [f"t{i}" for i in range(30)]
    out = {}
    for moments in ("cov", "mean"):  # kept by the extraction, or streamed from the shards
        out[moments] = extract(
            model,
            _Images(images),
            ["heads", "embedding"],
            tmp_path_factory.mktemp(moments),
            batch_size=16,
            dtype=torch.float64,
            rows_per_shard=32,
            moments=moments,
            progress=False,
        )
    return model, images, pool, texts, out


@pytest.mark.parametrize("moments", ["cov", "mean"])
def test_fit_from_store_equals_fit(stored, moments):
    model, images, pool, texts, stores = stored
    store = stores[moments]
    direct = pclens.fit(model, images.split(16), components="L1-2", texts=texts, text_embeddings=pool, n_texts=3)
    heads = pclens.store_heads(store, components="L-2-")
    fitted = pclens.fit_from_store(store, heads, model=model, texts=texts, text_embeddings=pool, n_texts=3)
    assert list(fitted.heads) == list(direct.heads) == [f"L{l}H{h}" for l in (1, 2) for h in range(4)]
    fitted.check_model(model)
    for a, b in zip(fitted, direct):
        assert a.k == b.k and a.n == b.n == 70
        torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(a.singular_values, b.singular_values, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(a.components, b.components, rtol=0, atol=1e-7)
        torch.testing.assert_close(a.projector, b.projector, rtol=0, atol=1e-7)
        assert torch.equal(a.pos_idx, b.pos_idx)
    torch.testing.assert_close(fitted.image_mean, direct.image_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        fitted.embedding.singular_values[:5], direct.embedding.singular_values[:5], rtol=1e-9, atol=1e-12
    )


def test_text_span_from_store_equals_moments(stored):
    model, images, pool, texts, stores = stored
    moments, _ = head_moments(model, images.split(16), ["L2H0", "L2H3"])
    from_store = text_span_from_store(stores["mean"], pool, texts, components=["L2H0", "L2H3"], n_texts=4, rank=5)
    for label, m in moments.items():
        ref = text_span_from_moments(m.mean, m.second_moment(), m.n, pool, texts, n_texts=4, rank=5)
        assert from_store[label].texts == ref.texts
        torch.testing.assert_close(from_store[label].basis, ref.basis, rtol=0, atol=1e-8)


def test_store_errors(stored):
    *_, stores = stored
    with pytest.raises(ValueError, match="L9H0.*layers 0..2"):
        pclens.fit_from_store(stores["cov"], components=["L9H0"])
    with pytest.raises(KeyError, match="decomposition target"):
        pclens.fit_from_store(stores["cov"], target="embedding")
    identity = pclens.fit_from_store(stores["cov"]).model  # the store's record: the model's own identity
    assert identity == stores["cov"].manifest["model"] == stores["cov"].model
    assert identity == model_identity(stored[0])
    with pytest.warns(DeprecationWarning, match="store.model"):
        assert pclens.store_identity(stores["cov"]) == identity


def test_store_components_and_old_names(stored):
    """Heads of a store are chosen with components= (default: every head it holds); the old
    heads= and last_layers= still work with a deprecation warning and choose the same heads."""
    from hookedclip.methods import store_heads, store_moments

    model, images, pool, texts, stores = stored
    store = stores["cov"]
    every = [f"L{l}H{h}" for l in range(3) for h in range(4)]
    assert store_heads(store) == every
    assert store_heads(store, components="L-2-") == store_heads(store, components="L1-2", model=model) == every[4:]
    with pytest.warns(DeprecationWarning, match=r"store_heads\(last_layers=\.\.\.\).*use components="):
        assert store_heads(store, last_layers=2) == every[4:]
    with pytest.warns(DeprecationWarning, match=r"store_heads\(heads=\.\.\.\).*use components="):
        assert store_heads(store, heads=["L2H1", "L0H3"]) == ["L2H1", "L0H3"]
    with pytest.warns(DeprecationWarning, match=r"store_moments\(heads=\.\.\.\)"):
        old = store_moments(store, heads=["L2H1"])
    assert torch.equal(old["L2H1"].m2, store_moments(store, ["L2H1"])["L2H1"].m2)
    with pytest.raises(ValueError, match="not heads"):
        store_heads(store, components="mlp1")

    with pytest.warns(DeprecationWarning, match=r"fit_from_store\(heads=\.\.\.\)"):
        old = pclens.fit_from_store(store, heads=["L2H0", "L2H3"], model=model)
    new = pclens.fit_from_store(store, components=["L2H0", "L2H3"], model=model)
    assert list(old.heads) == list(new.heads) == ["L2H0", "L2H3"]
    assert all(torch.equal(a.components, b.components) for a, b in zip(old, new))

    with pytest.warns(DeprecationWarning, match=r"text_span_from_store\(heads=\.\.\.\)"):
        old = text_span_from_store(store, pool, texts, heads=["L2H0"], n_texts=3, rank=5)
    assert (
        old["L2H0"].texts
        == text_span_from_store(store, pool, texts, components=["L2H0"], n_texts=3, rank=5)["L2H0"].texts
    )
    with pytest.raises(ValueError, match="pass text_embeddings= or the model"):  # nothing to embed the texts with
        text_span_from_store(store, None, texts)
