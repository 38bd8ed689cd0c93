"""The shipped toy autoencoder: it loads, belongs to the toy model, reconstructs, and its latents
pick out one attribute value of the toy world, which the toy vocabulary names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hookedclip.data.vocab import vocabulary
from hookedclip.identity import ModelMismatch
from hookedclip.methods import sae as S
from hookedclip.methods.sae.pretrained import CARD_JSON, WEIGHTS, evaluate
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.text import ATTRIBUTE_WORDS
from hookedclip.zeroshot import embed_texts

# how the toy vocabulary says each attribute value (its phrases for the toy world)
PHRASE = {
    "shape": "a {}",
    "color": "a {} shape",
    "texture": "a {} background",
    "background": "a {} background",
}


@pytest.fixture(scope="module")
def held_out(toy_sae):
    model, sae, world, _ = toy_sae
    from hookedclip.methods.sae.pretrained import class_tokens
    from hookedclip.toy.dataset import ToyWorld

    test = ToyWorld(1024, seed=1, split="test")
    return test, class_tokens(model, test)


def test_the_fixture_is_the_shipped_autoencoder(toy_sae):
    model, sae, world, residuals = toy_sae
    shipped = S.toy(model)
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), shipped.state_dict().values()))
    assert S.TopKSAE.from_pretrained("toy").cfg == sae.cfg == S.SAEConfig(128, 256, 8, layer=-1, token="cls")
    assert residuals.shape == (len(world), model.cfg.d_model)
    assert (WEIGHTS / "sae.safetensors").stat().st_size < 1_000_000
    with pytest.raises(ValueError, match="only one is 'toy'"):
        S.TopKSAE.from_pretrained("ViT-B-16")


def test_it_refuses_another_model(tiny_model):
    with pytest.raises(ModelMismatch):
        S.toy(tiny_model)


def test_it_reconstructs_held_out_images_as_its_card_says(toy_sae, held_out):
    _, sae, _, _ = toy_sae
    _, residuals = held_out
    measured = evaluate(sae, residuals)
    card = json.loads((WEIGHTS / CARD_JSON).read_text())
    assert measured["cosine"] > 0.95 and measured["fvu"] < 0.1
    assert measured["cosine"] == pytest.approx(card["held_out"]["cosine"], abs=0.01)
    assert measured["dead_fraction"] == pytest.approx(card["held_out"]["dead_fraction"], abs=0.05)


def test_latents_share_one_attribute_far_above_chance(toy_sae, held_out):
    _, sae, _, _ = toy_sae
    world, residuals = held_out
    purity = S.attribute_purity(sae.encode(residuals).detach(), world, top_n=16)
    shares = np.array([x["purity"] for x in purity["latents"]])
    assert len(shares) >= 30
    assert shares.mean() > 0.8 > purity["chance"] + 0.3
    assert {x["attribute"] for x in purity["latents"] if x["purity"] >= 0.9} >= {"shape", "color"}


def test_the_best_word_of_a_pure_latent_names_its_value(toy_sae, held_out):
    """A latent's direction in the joint space: the mean embedding of its top images minus the
    mean over all images; its best phrase of the toy vocabulary is the shared value's."""
    model, sae, _, _ = toy_sae
    world, residuals = held_out
    pool = vocabulary("toy")
    texts = embed_texts(model, pool)
    x = images_to_tensor(world.images(), tuple(model.cfg.image_mean), tuple(model.cfg.image_std))
    with torch.no_grad():
        images = F.normalize(model.encode_image(x), dim=-1)
    purity = S.attribute_purity(sae.encode(residuals).detach(), world, top_n=16)
    top = sae.encode(residuals).detach().topk(16, dim=0).indices.T
    pure = [x for x in purity["latents"] if x["purity"] >= 0.9]
    hits = 0
    for latent in pure:
        direction = images[top[latent["latent"]]].mean(0) - images.mean(0)
        best = pool[int((texts @ direction).argmax())]
        wanted = PHRASE[latent["attribute"]].format(ATTRIBUTE_WORDS[latent["attribute"]][latent["value"]])
        hits += best == wanted
    assert len(pure) >= 20
    assert hits / len(pure) > 0.6 > 10 / len(pool)


def test_attribute_names_recover_planted_latents():
    """Latents planted on one attribute value each are named by that value; a latent active on too
    few images is named as such."""
    from hookedclip.toy.dataset import ToyWorld

    attributes = ToyWorld(400, seed=5, split="test").attributes()
    gen = torch.Generator().manual_seed(0)
    noise = 0.3 * torch.rand(400, 4, generator=gen)
    planted = {0: ("shape", "circle"), 1: ("color", "red"), 2: ("background", "brown")}
    codes = noise.clone()
    for j, (attribute, value) in planted.items():
        codes[:, j] += torch.tensor([float(getattr(a, attribute) == value) for a in attributes])
    codes[:, 3] = 0.0
    codes[:5, 3] = 1.0  # active on 5 images only
    names = S.attribute_names(codes, attributes, min_active=10)
    assert names == ["circle", "red", "brown", "(rarely active)"]
    assert S.attribute_names(codes, attributes, min_active=3)[3] != "(rarely active)"
