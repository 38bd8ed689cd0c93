"""Concept vocabularies: text pools for TextSpan, PCLens labels and SITH's COMP.

A vocabulary is a list of strings. Files hold one concept per line (the SITH convention;
blank lines and lines starting with ``#`` are skipped).
"""

from __future__ import annotations

from pathlib import Path


def load_vocabulary(path: str | Path) -> list[str]:
    """One concept per line; duplicates dropped (first occurrence kept)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"vocabulary file {path} not found (expected one concept per line)")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    concepts = list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    if not concepts:
        raise ValueError(f"vocabulary file {path} has no concepts")
    return concepts


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet class names in the standard order, as shipped by open_clip."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def toy_text_pool() -> list[str]:
    """Short descriptions of every toy-world attribute value, plus distractor concepts that
    are not in the world (for TextSpan / PCLens labels on the toy model)."""
    from hookedclip.toy.text import ATTRIBUTE_WORDS, POSITION_PHRASES, article, vocabulary

    def _a(phrase: str) -> str:
        return f"{article(phrase)} {phrase}"

    words = ATTRIBUTE_WORDS
    pool = [_a(w) for w in words["shape"].values()]
    pool += [_a(f"{w} shape") for w in words["color"].values()]
    pool += [_a(f"{w} background") for w in words["texture"].values()]
    pool += [_a(f"{w} background") for w in words["background"].values()]
    pool += [_a(f"{w} shape") for w in words["size"].values()]
    pool += [f"a shape {POSITION_PHRASES[p]}" for p in words["position"]]
    pool += list(vocabulary()["distractors"])  # concepts absent from the world
    return list(dict.fromkeys(pool))


ENGLISH_SOURCES = ("visual", "frequent", "curated")


def curated_english() -> list[str]:
    """The curated list shipped with the package (``data/english_visual.txt``, ~300 common
    picturable words and phrases: objects, animals, scenes, weather, materials, colours,
    textures, shapes, actions and photo styles)."""
    from importlib import resources

    with resources.as_file(resources.files("hookedclip.data") / "english_visual.txt") as path:
        return load_vocabulary(path)


def frequent_english(n_words: int = 20_000) -> list[str]:
    """The ``n_words`` most frequent English words (``wordfreq``'s list, most frequent first)
    that are ASCII-alphabetic, at least 3 letters long and not stop words (scikit-learn's
    ``ENGLISH_STOP_WORDS``)."""
    import wordfreq
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    if n_words < 1:
        raise ValueError(f"n_words must be positive, got {n_words}")
    return [
        w
        for w in wordfreq.top_n_list("en", n_words)
        if w.isascii() and w.isalpha() and len(w) >= 3 and w not in ENGLISH_STOP_WORDS
    ]


def image_label_words() -> set[str]:
    """The lower-case words of the class names of ImageNet (open_clip), COCO and
    Kinetics-400 (torchvision's weight metadata): words that name or describe something
    shown in a labelled image or video data set."""
    import re

    from torchvision.models import detection, video

    coco = detection.FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    kinetics = video.R3D_18_Weights.DEFAULT.meta["categories"]
    names = imagenet_classnames() + [c for c in coco if c not in ("__background__", "N/A")] + list(kinetics)
    return {w for name in names for w in re.findall(r"[a-z]+", name.lower())}


def english_vocabulary(source: str = "visual", n_words: int = 20_000) -> list[str]:
    """General English visual concepts.

    ``source="visual"`` (default): the words of :func:`frequent_english` (``n_words``) that
    occur in an image data set's class names (:func:`image_label_words`), most frequent
    first, then the curated words and phrases not among them (scenes, colours, textures,
    styles, which class names rarely contain). ``"frequent"``: :func:`frequent_english`
    unfiltered. ``"curated"``: :func:`curated_english` only."""
    if source not in ENGLISH_SOURCES:
        raise ValueError(f"source must be one of {ENGLISH_SOURCES}, got {source!r}")
    if source == "curated":
        return curated_english()
    words = frequent_english(n_words)
    if source == "frequent":
        return words
    labels = image_label_words()
    return list(dict.fromkeys([w for w in words if w in labels] + curated_english()))


BUILTIN = {
    "imagenet": imagenet_classnames,
    "toy": toy_text_pool,
    "english": english_vocabulary,
    "english-curated": curated_english,
    "english-frequent": frequent_english,
}


def vocabulary(name_or_path: str | Path) -> list[str]:
    """A built-in vocabulary (``imagenet``, ``toy``, ``english``, ``english-curated``,
    ``english-frequent``) or a one-per-line file."""
    if str(name_or_path) in BUILTIN:
        return BUILTIN[str(name_or_path)]()
    return load_vocabulary(name_or_path)


def text_embeddings(
    model, concepts: list[str], cache_dir: str | Path | None = None, batch_size: int = 256, normalize: bool = True
):
    """Text embeddings ``[n_concepts, d_out]`` (float32, CPU) of ``concepts``, cached as one
    safetensors file per model and concept list under ``cache_dir`` (default
    ``$HOOKEDCLIP_CACHE/text`` or ``~/.cache/hookedclip/text``). The file name holds the model's
    :func:`~hookedclip.identity.model_identity` (config hash and weights fingerprint) and a hash of
    the concepts, so a later call with the same model (on any device, fp32 or fp16) and the
    same concepts reads the file instead of running the text tower."""
    import hashlib
    import json
    import os

    import torch
    from safetensors.torch import load as load_bytes

    from hookedclip.data.store import atomic_write, tensors_bytes
    from hookedclip.identity import model_identity

    cache_dir = Path(cache_dir or os.environ.get("HOOKEDCLIP_CACHE", Path.home() / ".cache" / "hookedclip")) / "text"
    identity = model_identity(model)
    concepts_hash = hashlib.sha256(json.dumps(list(concepts)).encode()).hexdigest()[:16]
    mode = "norm" if normalize else "raw"
    path = cache_dir / f"{identity['config_hash']}-{identity['weights']}-{concepts_hash}-{mode}.safetensors"
    if path.exists():
        return load_bytes(path.read_bytes())["text_embedding"]
    with torch.no_grad():
        emb = (
            torch.cat(
                [
                    model.encode_text(model.tokenize(concepts[i : i + batch_size]), normalize=normalize)
                    for i in range(0, len(concepts), batch_size)
                ]
            )
            .float()
            .cpu()
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    metadata = {
        "model": json.dumps(identity),
        "concepts_sha256": concepts_hash,
        "n_concepts": str(len(concepts)),
        "normalize": str(normalize),
    }
    atomic_write(path, tensors_bytes({"text_embedding": emb}, metadata=metadata))  # no half-written cache file
    return emb
