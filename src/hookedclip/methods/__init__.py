"""Interpretability methods built on the core: one module or package per method
(docs/architecture.md). What they share (streaming head moments, the text pool, store
adapters) lives in :mod:`hookedclip.methods._common` and is re-exported here."""

from hookedclip.methods._common import head_moments, store_embedding_moments, store_heads, store_moments, text_pool

__all__ = ["head_moments", "store_embedding_moments", "store_heads", "store_moments", "text_pool"]
