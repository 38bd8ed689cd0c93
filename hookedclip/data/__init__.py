"""Datasets and concept vocabularies."""
