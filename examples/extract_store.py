"""Extract per-head CLS contributions of the toy model into an ActivationStore, then read it.

Run: ``python examples/extract_store.py [OUT_DIR]``. Interrupt it and run it again: it
resumes after the last finished shard. Under several processes:
``torchrun --nproc-per-node 2 -m hookedclip.cli.cache --model toy --data toy:2048 --targets heads embedding --out OUT_DIR``.
"""

from __future__ import annotations

import argparse

import torch

from hookedclip import HookedCLIP
from hookedclip.data import toy_dataset
from hookedclip.data.extract import extract

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("out", nargs="?", default="toy-store", help="store directory (default: %(default)s)")
out = parser.parse_args().out
torch.set_num_threads(1)
model = HookedCLIP.from_pretrained("toy").eval()
store = extract(model, toy_dataset(1024), ["heads", "embedding"], out, batch_size=64, rows_per_shard=256)
print(store)

heads = store.targets["heads"]  # per row: [component, d_out], labels L0H0 ... rest
print("rows", len(store), "shape per row", heads.shape, "labels", heads.labels[:4], "...")

# Moments were accumulated during extraction: no row is loaded here.
moments = store.moments("heads")
variance = moments.covariance().diagonal(dim1=-2, dim2=-1).sum(-1)  # total variance per component
top = variance.argsort(descending=True)[:3]
print("highest-variance components:", [(heads.labels[i], round(float(variance[i]), 4)) for i in top])

# Rows are memory-mapped: read a range, one row, or iterate as a Dataset.
first = store.rows("heads", 0, 8)  # [8, component, d_out]
print("first rows", tuple(first.shape), "labels", store.rows("label", 0, 8).tolist())
loader = torch.utils.data.DataLoader(store.dataset(["embedding", "label"]), batch_size=256)
print("batches:", sum(1 for _ in loader))
