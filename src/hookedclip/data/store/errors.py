"""The errors a store raises."""


class StoreError(RuntimeError):
    """A store that cannot be used as asked (incomplete, mismatched, corrupt)."""


class StoreMismatch(StoreError):
    """Resuming or reading a store with another model, dataset, target list or layout."""


class CorruptShard(StoreError):
    """A shard whose bytes are not those recorded in the manifest."""
