"""SITH's layer-level API on the shipped toy model: dictionaries, ``decompose`` and
``SithResult``, the fidelity study and the suppression workflow; every bad input refused
before any work."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
import torch.nn.functional as F

from hookedclip import HookedCLIP
from hookedclip.data.vocab import text_embeddings, toy_text_pool
from hookedclip.identity import ModelIdentity, ModelMismatch
from hookedclip.methods import sith


@pytest.fixture(scope="module")
def toy() -> HookedCLIP:
    return HookedCLIP.from_pretrained("toy")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKEDCLIP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def toy_dictionary(toy, tmp_path_factory) -> sith.Dictionary:
    return sith.dictionary(toy, "toy", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def layer3(toy, toy_dictionary) -> sith.SithResult:
    return sith.decompose(toy, 3, toy_dictionary, k=3)


# ---------------------------------------------------------------------------------- dictionaries
def test_a_file_dictionary_drops_empty_lines_and_repeats_and_says_how_many(toy, tmp_path):
    path = tmp_path / "concepts.txt"
    path.write_text("a circle\n\na square\n  \na circle\n# a comment\na red shape\n")
    with pytest.warns(UserWarning, match=r"dropped 2 empty line\(s\) and 1 repeated concept\(s\); 3 distinct"):
        found = sith.dictionary(toy, path)
    assert found.concepts == ["a circle", "a square", "a red shape"]
    assert torch.equal(found.embeddings, text_embeddings(toy, found.concepts, normalize=False))
    assert found.model == ModelIdentity(**found.model) and found.source == str(path)
    assert torch.allclose(found.atoms.norm(dim=-1), torch.ones(3))


def test_concepts_are_embedded_once_then_read_from_the_cache(toy, tmp_path, monkeypatch):
    first = sith.dictionary(toy, ["a circle", "a square", "a heart"], cache_dir=tmp_path)
    calls = []
    monkeypatch.setattr(toy, "encode_text", lambda *a, **k: calls.append(1))
    again = sith.dictionary(toy, ["a circle", "a square", "a heart"], cache_dir=tmp_path)
    assert not calls and torch.equal(first.embeddings, again.embeddings)


def test_the_built_in_vocabulary_and_a_tensor(toy, toy_dictionary):
    assert toy_dictionary.concepts == toy_text_pool() and toy_dictionary.source == "toy"
    rows = torch.randn(5, toy.cfg.vision.output_dim)
    found = sith.dictionary(toy, rows)
    assert found.concepts[0] == "concept 0" and found.model is None
    assert sith.dictionary(toy, rows, concepts=list("abcde")).concepts == list("abcde")


def test_a_dictionary_saves_and_loads(toy_dictionary, toy, tmp_path):
    toy_dictionary.save(tmp_path / "d")
    back = sith.Dictionary.load(tmp_path / "d", model=toy)
    assert back.concepts == toy_dictionary.concepts and torch.equal(back.embeddings, toy_dictionary.embeddings)


@pytest.fixture
def no_work(monkeypatch):
    """``decompose`` may not start: every check comes before the SVD."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    module = importlib.import_module("hookedclip.methods.sith.decompose")  # the module, not the function
    monkeypatch.setattr(module, "head_svd", refuse)


def test_bad_dictionaries_are_refused_before_any_work(toy, toy_dictionary, no_work):
    d_out = toy.cfg.vision.output_dim
    with pytest.raises(ValueError, match=f"dictionary is 7 wide but this model's joint space is {d_out} wide"):
        sith.dictionary(toy, torch.randn(4, 7))
    other = copy.copy(toy_dictionary)
    other.model = ModelIdentity(name="ViT-B-32/openai", config_hash="0" * 16, weights="1" * 16)
    with pytest.raises(ModelMismatch, match="this dictionary"):
        sith.decompose(toy, 3, other)
    with pytest.raises(ValueError, match="must be a sith.Dictionary"):
        sith.decompose(toy, 3, torch.randn(10, d_out))
    with pytest.raises(ValueError, match="at least 2 are needed"), pytest.warns(UserWarning, match="dropped 1 empty"):
        sith.dictionary(toy, ["a circle", "", "a circle"])
    with pytest.raises(FileNotFoundError, match="not a built-in vocabulary"):
        sith.dictionary(toy, "no-such-file.txt")
    with pytest.raises(ValueError, match="one name per row"):
        sith.dictionary(toy, torch.randn(4, d_out), concepts=["a", "b"])


def test_bad_arguments_are_refused_before_any_work(toy, toy_dictionary, no_work):
    n = len(toy_dictionary)
    with pytest.raises(ValueError, match=f"k must be an integer in 1..{n}"):
        sith.decompose(toy, 3, toy_dictionary, k=n + 1)
    with pytest.raises(ValueError, match="layer=4 is out of range: the image tower has 4 blocks"):
        sith.decompose(toy, 4, toy_dictionary)
    with pytest.raises(ValueError, match="method must be one of"):
        sith.decompose(toy, 3, toy_dictionary, method="omp")
    with pytest.raises(ValueError, match="sides must be"):
        sith.decompose(toy, 3, toy_dictionary, sides="right")


def test_unsupported_architectures_are_named(toy, toy_dictionary, no_work):
    llava = copy.deepcopy(toy)
    llava.cfg.extra["llava_vision_feature_layer"] = -2
    with pytest.raises(NotImplementedError, match="llava_vision_feature_layer"):
        sith.decompose(llava, 3, toy_dictionary)
    headless = copy.deepcopy(toy)
    headless.visual.W_proj = None
    with pytest.raises(ValueError, match="no projection into a joint image-text space"):
        sith.decompose(headless, 3, toy_dictionary)


# ---------------------------------------------------------------------------------- decompose
def test_decompose_is_the_pursuit_on_the_mapped_singular_vectors(toy, toy_dictionary, layer3):
    heads, r = toy.cfg.vision.heads, toy.cfg.vision.d_head
    assert layer3.indices.shape == (2, heads, r, 3) and layer3.sides == ["right", "left"]
    svd = sith.head_svd(toy, 3)
    for s, side in enumerate(layer3.sides):
        targets = sith.to_joint(toy, svd.vectors(side)).float()
        found = sith.comp(targets, toy_dictionary.atoms, k=3, lam=0.3)
        assert torch.equal(layer3.indices[s], found.indices)
        recon = found.reconstruct(toy_dictionary.atoms.double())
        expected = F.cosine_similarity(recon, targets.double(), dim=-1)
        assert torch.allclose(layer3.fidelity[s].double(), expected, atol=1e-6)
    assert torch.equal(layer3.S, svd.S)
    assert not torch.equal(layer3.indices[0], layer3.indices[1])  # the two sides differ
    assert ((layer3.fidelity > 0) & (layer3.fidelity <= 1 + 1e-6)).all()


def test_every_method_and_the_image_mean(toy, toy_dictionary):
    mean = F.normalize(torch.randn(toy.cfg.vision.output_dim, generator=torch.Generator().manual_seed(0)), dim=0)
    for method in sith.METHODS:
        result = sith.decompose(toy, -1, toy_dictionary, k=2, method=method, sides=["right"], rank=3, image_mean=mean)
        assert result.indices.shape == (1, toy.cfg.vision.heads, 3, 2) and result.method == method
    plain = sith.decompose(toy, -1, toy_dictionary, k=2, sides=["right"], rank=3)
    centred = sith.decompose(toy, -1, toy_dictionary, k=2, sides=["right"], rank=3, image_mean=mean)
    assert not torch.equal(plain.fidelity, centred.fidelity)


def test_sith_result_reading_and_protocol(toy, layer3, tmp_path):
    pairs = layer3.explanation(1, 0)
    assert pairs and all(c > 0 for _, c in pairs)
    assert layer3.top_concepts(1, 0) == [max(pairs, key=lambda p: p[1])[0]]
    chosen = layer3.select(lambda c: "background" in c)
    assert chosen and all("background" in layer3.top_concepts(int(lab[3]), i)[0] for lab, i in chosen)
    assert layer3.select([layer3.top_concepts(1, 0)[0]])[0][0].startswith("L3H")
    with pytest.raises(KeyError, match="not in the dictionary"):
        layer3.select(["a unicorn"])
    with pytest.raises(ValueError, match="was not explained"):
        sith.SithResult(**{**layer3.__dict__, "sides": ["right"]}).explanation(0, 0, side="left")
    assert "SITH of layer 3" in layer3.summary()
    assert len(layer3.to_csv().splitlines()) == 1 + 2 * layer3.indices[0].numel()
    layer3.save(tmp_path / "r")
    back = sith.SithResult.load(tmp_path / "r", model=toy)
    assert torch.equal(back.indices, layer3.indices) and back.concepts == layer3.concepts
    other = HookedCLIP.from_pretrained("toy")
    with torch.no_grad():
        other.visual.blocks[0].attn.W_V.mul_(2)
    with pytest.raises(ModelMismatch):
        sith.SithResult.load(tmp_path / "r", model=other)
    layer3.plot(tmp_path / "head.png", head=1)
    layer3.plot(tmp_path / "heads.png")
    assert (tmp_path / "head.png").stat().st_size > 0 and (tmp_path / "heads.png").stat().st_size > 0


# ---------------------------------------------------------------------------------- fidelity study
def test_fidelity_study(toy, toy_dictionary, tmp_path):
    study = sith.fidelity_study(toy, 3, toy_dictionary, ks=(1, 2, 4), methods=("comp", "nnomp", "top_k", "lasso"))
    assert study.fidelity.shape == (4, 3) and study.n_vectors == toy.cfg.vision.heads * toy.cfg.vision.d_head
    nnomp = study.fidelity[1]
    assert (nnomp[1:] >= nnomp[:-1] - 1e-6).all()  # the exact refit: fidelity grows with k
    assert torch.allclose(study.fidelity[:3, 0], study.fidelity[0, 0].expand(3), atol=1e-6)  # k=1: the nearest
    assert torch.isnan(study.coherence[:3, 0]).all() and not torch.isnan(study.coherence[:, 1:]).any()
    header = study.to_csv(tmp_path / "f.csv").splitlines()[0]
    assert header == "method,k,fidelity_mean,fidelity_std,coherence"
    study.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
    assert study.summary().splitlines()[0].endswith("COMP lam=0.3, lasso l1_penalty=0.1")
    loaded = sith.FidelityStudy.load(study.save(tmp_path / "study"), model=toy)
    assert (loaded.lam, loaded.l1_penalty, loaded.methods) == (0.3, 0.1, study.methods)
    assert torch.equal(loaded.fidelity, study.fidelity)


def test_coherence_by_brute_force():
    gen = torch.Generator().manual_seed(0)
    atoms = F.normalize(torch.randn(12, 6, generator=gen, dtype=torch.float64), dim=-1)
    found = sith.Pursuit(
        indices=torch.tensor([[0, 3, 5], [1, 2, 4]]),
        coefficients=torch.tensor([[0.5, 0.2, 0.0], [0.3, 0.0, 0.0]], dtype=torch.float64),
        residual_norms=torch.zeros(2, 3),
    )
    assert sith.coherence(found, atoms) == pytest.approx(float(atoms[0] @ atoms[3]))


# ---------------------------------------------------------------------------------- suppression
def test_suppress_counts_and_identity(toy, layer3, tmp_path):
    from hookedclip.data.spurious import toy_task

    task = toy_task(toy, n=40)
    vectors = layer3.select(lambda c: "background" in c)[:3]
    same = sith.suppress(toy, vectors, task, multiplier=1.0)
    assert torch.equal(same.correct_before, same.correct_after) and int(same.counts.sum()) == 40
    changed = sith.suppress(toy, vectors, task)
    name, acc, (low, high) = changed.worst_group("before")
    assert name in task.group_names and low <= acc <= high
    assert "worst group" in changed.summary() and len(changed.to_csv().splitlines()) == 5
    changed.save(tmp_path / "s")
    assert sith.Suppression.load(tmp_path / "s", model=toy).vectors == changed.vectors
    changed.plot(tmp_path / "s.png")
    with pytest.raises(ValueError, match="no vectors to suppress"):
        sith.suppress(toy, [], task)
    with pytest.raises(KeyError, match="none of"):
        sith.vectors_by_concept([layer3], ["water"], present_only=True)
    assert sith.vectors_by_concept([layer3], ["water", "a striped background"], present_only=True) == layer3.select(
        ["a striped background"]
    )


def test_the_image_mean_from_a_store(toy, tmp_path):
    from hookedclip.data.datasets import toy_dataset
    from hookedclip.data.extract import extract
    from hookedclip.toy.model import images_to_tensor

    data = toy_dataset(40, seed=3)
    store = extract(toy, data, ["embedding"], tmp_path / "store", batch_size=16, rows_per_shard=16, progress=False)
    images = images_to_tensor(data.world.images(), toy.cfg.image_mean, toy.cfg.image_std)
    expected = sith.image_mean(toy, images.split(16))
    assert torch.allclose(sith.image_mean_from_store(store, model=toy), expected, atol=1e-5)
    other = copy.deepcopy(toy)
    with torch.no_grad():
        other.visual.blocks[0].attn.W_V.mul_(2)
    with pytest.raises(ModelMismatch):
        sith.image_mean_from_store(store, model=other)
    with pytest.raises(KeyError, match="no 'pooled' rows"):
        sith.image_mean_from_store(store, key="pooled")
