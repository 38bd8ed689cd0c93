"""Datasets and concept vocabularies."""

from hookedclip.data.datasets import (
    FileImages,
    ImageFolder,
    ImageNetSegmentation,
    ImageNetVal,
    ToyImages,
    Waterbirds,
    open_dataset,
    preprocess_mask,
    toy_dataset,
)

__all__ = [
    "FileImages",
    "ImageFolder",
    "ImageNetSegmentation",
    "ImageNetVal",
    "ToyImages",
    "Waterbirds",
    "open_dataset",
    "preprocess_mask",
    "toy_dataset",
]
