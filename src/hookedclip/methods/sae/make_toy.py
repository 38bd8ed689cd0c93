"""Rebuild the shipped toy autoencoder: ``python -m hookedclip.methods.sae.make_toy`` (about two
minutes on two CPU cores); rewrites ``hookedclip/toy/weights/sae.*``, ``sae_card.json`` and ``SAE_CARD.md``."""

from __future__ import annotations

import json

from hookedclip.methods.sae.pretrained import train_toy

if __name__ == "__main__":
    _, card = train_toy()
    print(json.dumps({k: card[k] for k in ("train_seconds", "train_final", "held_out", "purity")}, indent=1))
