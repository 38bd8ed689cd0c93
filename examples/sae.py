"""Train a TopK sparse autoencoder on the toy model's last-layer class token, from a store.

Extracts the class-token residual after the last block for 2,048 toy-world training images
into an ActivationStore, trains an autoencoder from the store (no model in the loop), saves it,
splices it back into the model and reads the latents of a few held-out images. About a minute
on two CPU cores. The command-line equivalent:
``hookedclip cache --data toy:2048 --targets visual.blocks.3.hook_resid_post@0 --out STORE`` then
``hookedclip sae train --store STORE --out SAE --latents 256 --k 8 --batch 256 --lr 1e-3 --steps 500``.

Run: ``python examples/sae.py [OUT_DIR]``; run it again to reuse the store (and the trained
autoencoder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip import HookedCLIP
from hookedclip.data import toy_dataset
from hookedclip.data.extract import extract
from hookedclip.methods import sae as S
from hookedclip.names import act_name
from hookedclip.toy.dataset import ToyWorld
from hookedclip.toy.model import images_to_tensor

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("out", nargs="?", default="toy-sae", help="output directory (default: %(default)s)")
parser.add_argument("--steps", type=int, default=500, help="training steps of batch 256 (default: %(default)s)")
args = parser.parse_args()
out = Path(args.out)
torch.set_num_threads(1)
model = HookedCLIP.from_pretrained("toy").eval()

# 1. the class token after the last block, once, into a store
target = act_name("resid_post", model.cfg.n_layers - 1) + "@0"  # visual.blocks.3.hook_resid_post@0
store = extract(model, toy_dataset(2048, split="train"), [target], out / "store", batch_size=256, progress=False)
print(store)

# 2. train from the store: the faster mode (batch 256, lr 1e-3), not the published batch-32 recipe
cfg = S.TrainConfig(d_sae=256, k=8, layer=-1, steps=args.steps, batch_size=256, lr=1e-3, log_every=100)
sae, log = S.train(store, target, cfg, model=model, out=out / "sae", resume=True)
print(log)
for step, loss, cos, dead in zip(log.step, log.loss, log.cosine, log.dead_fraction):
    print(f"  step {step:5d}  loss {loss:.4f}  cosine {cos:.3f}  dead {dead:.2f}")

# 3. load it back (it refuses another model) and splice it into the model
sae = S.TopKSAE.load(out / "sae", model=model)
world = ToyWorld(8, seed=1, split="test")
x = images_to_tensor(world.images(), tuple(model.cfg.image_mean), tuple(model.cfg.image_std))
with torch.no_grad():
    plain = model.encode_image(x)
    with S.splice(model, sae, mode="error_kept"):  # the identity in value
        kept = model.encode_image(x)
    with S.splice(model, sae, mode="recon_only"):  # the reconstruction alone
        recon = model.encode_image(x)
print("error_kept changes the embedding by", f"{(kept - plain).abs().max():.1e}")
print("recon_only: cosine to the plain embedding", torch.cosine_similarity(recon, plain).mean().item())

# 4. which latents each image uses
_, cache = model.run_with_cache(x, names_filter=act_name("resid_post", -1, n_layers=model.cfg.n_layers))
values, indices = sae.select(sae.encode_pre(cache[sae.hook_name(model.cfg.n_layers)][:, 0]))
for attributes, top in zip(world.attributes(), indices[:, :3].tolist()):
    print(f"  {attributes.color:>6} {attributes.shape:<8} on {attributes.background:<5}: latents {top}")
