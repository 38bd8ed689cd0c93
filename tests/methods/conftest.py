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
    """An autoencoder on the shipped toy model's last-layer class-token residual, trained here in
    a few seconds with a plain loop (cosine reconstruction loss, AdamW), and what it was trained on.

    Returns ``(model, sae, world, residuals)``: ``world`` the 2,048 training-split
    :class:`~hookedclip.toy.dataset.ToyWorld` images, ``residuals [2048, d_model]`` their class-token rows.
    """
    import torch.nn.functional as F

    from hookedclip import HookedCLIP
    from hookedclip.methods import sae as S
    from hookedclip.names import act_name
    from hookedclip.toy.dataset import ToyWorld
    from hookedclip.toy.model import images_to_tensor

    model = HookedCLIP.from_pretrained("toy")
    world = ToyWorld(2048, seed=0, split="train")
    site = act_name("resid_post", model.cfg.n_layers - 1)
    rows = []
    with torch.no_grad():
        for start in range(0, len(world), 512):
            images = world.images(range(start, min(start + 512, len(world))))
            x = images_to_tensor(images, tuple(model.cfg.image_mean), tuple(model.cfg.image_std))
            _, cache = model.run_with_cache(x, names_filter=site)
            rows.append(cache[site][:, 0])
    residuals = torch.cat(rows)
    torch.manual_seed(0)
    sae = S.TopKSAE(S.SAEConfig(model.cfg.d_model, 256, 8, layer=-1, token="cls"), model=model)
    optimiser = torch.optim.AdamW(sae.parameters(), lr=2e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(400):
        batch = residuals[torch.randint(0, len(residuals), (128,), generator=order)]
        recons = sae(batch, mode="recon_only")
        loss = 100 * (F.normalize(recons, dim=-1) - F.normalize(batch, dim=-1)).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        sae.normalize_decoder_()
    return model, sae.eval(), world, residuals
