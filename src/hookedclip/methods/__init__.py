"""Interpretability methods built on the core: one module or package per method (docs/architecture.md)."""
