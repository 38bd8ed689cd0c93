"""Bad input gets clear errors; save/load round-trips; the forward's three modes."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import random_tokens, tiny_open_clip

from hookedclip import HookedCLIP


def test_forward_modes(tiny_model, images):
    tokens = random_tokens(2, tiny_model.cfg.text.context_length, tiny_model.cfg.text.vocab_size)
    img, txt = tiny_model(images), tiny_model(tokens=tokens)
    torch.testing.assert_close(img, tiny_model.encode_image(images))
    logits = tiny_model(images, tokens)
    expected = (
        tiny_model.logit_scale.exp()
        * torch.nn.functional.normalize(img, dim=-1)
        @ torch.nn.functional.normalize(txt, dim=-1).T
    )
    torch.testing.assert_close(logits, expected)
    assert logits.shape == (3, 2)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(2, 3, 24, 24), r"24x24 px, the model expects 16x16"),
        (torch.zeros(2, 1, 16, 16), r"1 channels, the model expects 3"),
        (torch.zeros(2, 16, 16, 3), r"channels-last"),
        (torch.zeros(3, 16, 16), r"4-D"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.float64), r"float64, the model is torch.float32"),
    ],
)
def test_bad_images(tiny_model, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_model.encode_image(bad)


def test_bad_tokens(tiny_model):
    ctx = tiny_model.cfg.text.context_length
    with pytest.raises(ValueError, match=f"sequences are {ctx + 1} long, the text tower takes at most {ctx}"):
        tiny_model.encode_text(torch.zeros(1, ctx + 1, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        tiny_model.encode_text(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 100\)"):
        tiny_model.encode_text(torch.tensor([[1, 100]]))
    with pytest.raises(TypeError, match="tokens="):
        tiny_model(torch.zeros(1, 4, dtype=torch.long))


def test_no_text_tower_message(tiny_model):
    from hookedclip import CLIPConfig

    vision_only = HookedCLIP(CLIPConfig(vision=tiny_model.cfg.vision))
    with pytest.raises(ValueError, match="no text tower"):
        vision_only.encode_text(torch.zeros(1, 3, dtype=torch.long))


def test_bpe_tokenizer_for_clip_vocabulary():
    model = HookedCLIP.from_open_clip(tiny_open_clip(vocab_size=49408))
    tokens = model.tokenize(["a dog", "a cat"])
    assert tokens.dtype == torch.long and tokens.shape == (2, model.cfg.text.context_length)
    assert tokens[0, 0] == 49406 and 49407 in tokens[0].tolist()
    assert model.encode_text(tokens).shape == (2, model.cfg.text.output_dim)


def test_no_tokenizer_message(tiny_model):
    assert tiny_model.tokenizer is None  # vocabulary of 100: no offline tokenizer fits it
    with pytest.raises(ValueError, match="no tokenizer"):
        tiny_model.tokenize("a dog")


def test_save_load_round_trip(images, tmp_path):
    model = HookedCLIP.from_open_clip(tiny_open_clip(vocab_size=49408))
    model.save(tmp_path / "m")
    loaded = HookedCLIP.load(tmp_path / "m")
    assert loaded.cfg == model.cfg and loaded.cfg.hash() == model.cfg.hash()
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    torch.testing.assert_close(loaded.tokenize("a dog"), model.tokenize("a dog"))
    with pytest.raises(FileNotFoundError, match="HookedCLIP.save"):
        HookedCLIP.load(tmp_path / "missing")


def test_unknown_shipped_model():
    with pytest.raises(ValueError, match="ships 'toy'"):
        HookedCLIP.from_pretrained("nope")


def test_device_mismatch_is_named(tiny_model):
    images = torch.zeros(1, 3, 16, 16, device="meta")
    with pytest.raises(ValueError, match="images are on meta, the model on cpu"):
        tiny_model.encode_image(images)
    with pytest.raises(ValueError, match="tokens are on meta"):
        tiny_model.encode_text(torch.zeros(1, 4, dtype=torch.long, device="meta"))
