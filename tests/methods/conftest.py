"""Shared fixtures of the method tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny matrices: intra-op threading only adds contention (10–50x slower on a busy box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_sae():
    """The shipped toy autoencoder (``sae.toy()``, on the toy model's last-layer class-token
    residual; recipe in ``hookedclip.methods.sae.pretrained``) and data to use it on.

    Returns ``(model, sae, world, residuals)``: ``world`` the 2,048 training-split
    :class:`~hookedclip.toy.dataset.ToyWorld` images, ``residuals [2048, d_model]`` their class-token rows.
    """
    from hookedclip import HookedCLIP
    from hookedclip.methods import sae as S
    from hookedclip.methods.sae.pretrained import class_tokens
    from hookedclip.toy.dataset import ToyWorld

    model = HookedCLIP.from_pretrained("toy")
    world = ToyWorld(2048, seed=0, split="train")
    return model, S.toy(model), world, class_tokens(model, world)
