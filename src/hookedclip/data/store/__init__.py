"""ActivationStore: a directory of safetensors shards, a manifest, and streaming moments.

Layout of a store directory::

    manifest.json                    written last: the store is complete and readable
    rank000-shard00000.safetensors   rows [start, stop) of rank 0's slice of the dataset
    rank000.json                     rank 0's progress log (header, committed shards, skips)
    moments.safetensors              merged RunningMoments of every target (float64)

Every file is written to a temporary name and renamed (``os.replace``), so an interrupt
or a full disk never leaves a half-written file under a final name. A shard is committed
when its rank log lists it (with its sha256); anything on disk and not listed is
redone on resume. The log names a moments checkpoint written *before* it, so the
moments always describe exactly the committed shards.

A shard holds one tensor per target, ``[rows, *shape]``, plus int64 ``index`` (position
in the dataset), ``label`` and ``group`` rows; its safetensors metadata holds the image
ids (a single key, so the file bytes are deterministic).
"""

from hookedclip.data.store.errors import CorruptShard, StoreError, StoreMismatch
from hookedclip.data.store.files import (
    atomic_write,
    atomic_write_json,
    check_shard,
    moments_bytes,
    moments_from_tensors,
    read_moments,
    remove_temporaries,
    sha256_file,
    tensors_bytes,
)
from hookedclip.data.store.manifest import (
    FORMAT,
    HEADER_KEYS,
    MANIFEST,
    MAX_COVARIANCE_BYTES,
    MOMENTS,
    RESUME_FIX,
    ROW_KEYS,
    TargetSpec,
    check_header,
    dataset_fingerprint,
    model_fingerprint,
    moments_kind,
    rank_log_name,
    shard_name,
    spec_dicts,
)
from hookedclip.data.store.reader import ActivationStore, StoreDataset
from hookedclip.data.store.writer import RankWriter, finalize

__all__ = [
    "FORMAT",
    "HEADER_KEYS",
    "MANIFEST",
    "MAX_COVARIANCE_BYTES",
    "MOMENTS",
    "RESUME_FIX",
    "ROW_KEYS",
    "ActivationStore",
    "CorruptShard",
    "RankWriter",
    "StoreDataset",
    "StoreError",
    "StoreMismatch",
    "TargetSpec",
    "atomic_write",
    "atomic_write_json",
    "check_header",
    "check_shard",
    "dataset_fingerprint",
    "finalize",
    "model_fingerprint",
    "moments_bytes",
    "moments_from_tensors",
    "moments_kind",
    "rank_log_name",
    "read_moments",
    "remove_temporaries",
    "sha256_file",
    "shard_name",
    "spec_dicts",
    "tensors_bytes",
]
