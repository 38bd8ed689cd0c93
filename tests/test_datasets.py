"""Datasets from local paths, on small synthetic copies of each layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hookedclip.data.datasets import (
    ImageFolder,
    ImageNetSegmentation,
    ImageNetVal,
    ToyImages,
    Waterbirds,
    open_dataset,
    preprocess_mask,
)
from hookedclip.toy.world import SpuriousSpec, ToyWorld


def save_image(path, value: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_with_classes_and_flat(tmp_path):
    for cls, n in (("b_dog", 2), ("a_cat", 3)):
        for k in range(n):
            save_image(tmp_path / "classes" / cls / f"{k}.jpg", 10 * k)
    (tmp_path / "classes" / "a_cat" / "notes.txt").write_text("not an image")
    data = ImageFolder(tmp_path / "classes")
    assert data.classes == ["a_cat", "b_dog"] and len(data) == 5
    assert [data[i]["label"] for i in range(5)] == [0, 0, 0, 1, 1]
    assert data[3]["id"] == "b_dog/0.jpg" and data[0]["image"].mode == "RGB"
    for k in range(2):
        save_image(tmp_path / "flat" / f"{k}.png", k)
    flat = ImageFolder(tmp_path / "flat")
    assert flat.classes is None and flat[1]["label"] == -1
    assert data.fingerprint() != flat.fingerprint()


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*folder of images"):
        ImageFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path / "empty")


def test_transform_is_the_models_preprocessing(tmp_path, tiny_model):
    save_image(tmp_path / "x" / "0.png", 100, size=(30, 20))
    item = ImageFolder(tmp_path / "x", transform=tiny_model.preprocess)[0]
    assert item["image"].shape == (3, tiny_model.cfg.vision.image_size, tiny_model.cfg.vision.image_size)


def write_waterbirds(root) -> list[tuple[int, int, int]]:
    rows = [(y, split, place) for y in (0, 1) for place in (0, 1) for split in (0, 2)]
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for i, (y, split, place) in enumerate(rows):
        name = f"{'001' if y else '002'}.Bird/img_{i}.jpg"
        save_image(root / name, i)
        lines.append(f"{i + 1},{name},{y},{split},{place},/x/y.jpg")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return rows


def test_waterbirds_groups_and_splits(tmp_path):
    rows = write_waterbirds(tmp_path)
    test = Waterbirds(tmp_path, split="test")
    expected = [(y, 2 * y + place) for y, split, place in rows if split == 2]
    assert [(test[i]["label"], test[i]["group"]) for i in range(len(test))] == expected
    assert sorted(g for _, g in expected) == [0, 1, 2, 3]
    assert len(Waterbirds(tmp_path, split=None)) == len(rows) and len(Waterbirds(tmp_path, "train")) == 4
    assert Waterbirds.group_names()[1] == "landbird on water"
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        Waterbirds(tmp_path / "missing")
    with pytest.raises(ValueError, match="split"):
        Waterbirds(tmp_path, split="dev")


def test_imagenet_val_from_labels_file(tmp_path):
    for k in range(3):
        save_image(tmp_path / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG", k)
    (tmp_path / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\n")
    data = ImageNetVal(tmp_path / "val", labels=tmp_path / "val.txt")
    assert [data[i]["label"] for i in range(2)] == [65, 970] and len(data.classes) == 1000
    from_spec = open_dataset(f"imagenet-val:{tmp_path / 'val'}:{tmp_path / 'val.txt'}")  # a file: the labels
    assert isinstance(from_spec, ImageNetVal) and from_spec.fingerprint() == data.fingerprint()
    assert data.classes[65] == "sea snake"  # open_clip's standard order
    with pytest.raises(FileNotFoundError, match="labels=.*devkit="):
        ImageNetVal(tmp_path / "val")


def test_imagenet_val_from_devkit_maps_to_sorted_wnid_order(tmp_path):
    from scipy.io import savemat

    for k in range(3):
        save_image(tmp_path / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG", k)
    # ILSVRC ids 1..3 in a non-alphabetical WordNet order, plus a non-leaf synset
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")]
    synsets = np.array(
        [(1, "n03000000", 0), (2, "n01000000", 0), (3, "n02000000", 0), (4, "n00000001", 3)], dtype=dtype
    )
    (tmp_path / "devkit" / "data").mkdir(parents=True)
    savemat(tmp_path / "devkit" / "data" / "meta.mat", {"synsets": synsets})
    (tmp_path / "devkit" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n3\n")
    data = ImageNetVal(tmp_path / "val", devkit=tmp_path / "devkit")
    assert [data[i]["label"] for i in range(3)] == [2, 0, 1]
    spec = f"imagenet-val:{tmp_path / 'val'}:{tmp_path / 'devkit'}"  # a folder: the devkit
    assert [open_dataset(spec)[i]["label"] for i in range(3)] == [2, 0, 1]
    (tmp_path / "devkit" / "data" / "meta.mat").unlink()
    with pytest.raises(FileNotFoundError, match="meta.mat not found: expected the devkit's meta.mat"):
        ImageNetVal(tmp_path / "val", devkit=tmp_path / "devkit")
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_validation_ground_truth.txt not found"):
        ImageNetVal(tmp_path / "val", devkit=tmp_path / "no-devkit")


def test_imagenet_val_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere not found: expected the ILSVRC2012 validation images"):
        ImageNetVal(tmp_path / "nowhere")
    save_image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", 0)
    with pytest.raises(FileNotFoundError, match="val.txt not found: expected a text file of 'FILENAME LABEL' lines"):
        ImageNetVal(tmp_path / "val", labels=tmp_path / "val.txt")
    (tmp_path / "bad.txt").write_text("ILSVRC2012_val_00000001.JPEG sixty-five\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 'FILENAME LABEL'"):
        ImageNetVal(tmp_path / "val", labels=tmp_path / "bad.txt")


def test_imagenet_val_from_wnid_folders_needs_all_classes(tmp_path):
    wnids = [f"n{k:08d}" for k in range(1000)]
    for w in wnids:
        (tmp_path / w).mkdir()
    save_image(tmp_path / wnids[7] / "a.JPEG", 1)
    save_image(tmp_path / wnids[999] / "b.JPEG", 2)
    data = ImageNetVal(tmp_path)
    assert [data[i]["label"] for i in range(2)] == [7, 999]
    assert open_dataset(f"imagenet-val:{tmp_path}").paths == data.paths
    (tmp_path / wnids[3]).rmdir()
    with pytest.raises(ValueError, match="999 WordNet-id class folders"):
        ImageNetVal(tmp_path)


def random_segmentations(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` random uint8 images [8 + k, 10, 3] and their 0/1 masks (sizes differ per item)."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, size=(8 + k, 10, 3), dtype=np.uint8) for k in range(n)]
    masks = [(rng.random((8 + k, 10)) > 0.5).astype(np.uint8) for k in range(n)]
    return images, masks


def write_segmentation_mat(path, n: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from scipy.io import savemat

    images, masks = random_segmentations(n, seed=0)
    img_cell = np.empty((n, 1), dtype=object)
    gt_cell = np.empty((n, 1), dtype=object)
    for k in range(n):
        img_cell[k, 0] = images[k]
        inner = np.empty((1, 1), dtype=object)  # gt entries are themselves 1x1 cells
        inner[0, 0] = masks[k]
        gt_cell[k, 0] = inner
    savemat(path, {"value": {"img": img_cell, "gt": gt_cell}})
    return images, masks


@pytest.mark.parametrize("writer", ["v5", "v7.3"])
def test_imagenet_segmentation_images_and_masks(tmp_path, writer):
    write = {"v5": write_segmentation_mat, "v7.3": write_segmentation_mat_v73}[writer]
    images, masks = write(tmp_path / "gtsegs.mat")
    data = ImageNetSegmentation(tmp_path / "gtsegs.mat")
    assert len(data) == 3
    for k in range(3):
        item = data[k]
        assert np.array_equal(item["image"], images[k]) and np.array_equal(item["mask"], masks[k] > 0)
    assert preprocess_mask(data[2]["mask"], 6).shape == (6, 6)
    from_spec = open_dataset(f"imagenet-seg:{tmp_path / 'gtsegs.mat'}")
    assert isinstance(from_spec, ImageNetSegmentation) and np.array_equal(from_spec[1]["mask"], masks[1] > 0)
    with pytest.raises(FileNotFoundError, match="gtsegs_ijcv.mat"):
        ImageNetSegmentation(tmp_path / "missing.mat")


def test_preprocess_mask_matches_image_geometry():
    mask = np.zeros((20, 40), dtype=bool)
    mask[:, 10:30] = True  # the centre half of a wide image survives the centre crop
    out = preprocess_mask(mask, 10)
    assert out.shape == (10, 10) and out.all()


def test_toy_images_labels_and_groups():
    world = ToyWorld(8, seed=1, split="test", spurious=SpuriousSpec(), group_balanced=True)
    data = ToyImages(world, attribute="shape")
    assert [data[i]["group"] for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [data[i]["label"] for i in range(4)] == [a.labels()["shape"] for a in world.attributes(range(4))]
    assert data.fingerprint() != ToyImages(ToyWorld(8, seed=2, split="test")).fingerprint()


def test_toy_preprocessing_equals_training_normalisation():
    from hookedclip import HookedCLIP
    from hookedclip.toy.model import images_to_tensor

    model = HookedCLIP.from_pretrained("toy")
    world = ToyWorld(4, seed=0, split="test", image_size=model.cfg.vision.image_size)
    data = ToyImages(world, transform=model.preprocess)
    ours = torch.stack([data[i]["image"] for i in range(4)])
    torch.testing.assert_close(ours, images_to_tensor(world.images()), rtol=0, atol=1e-6)


def test_open_dataset_specs(tmp_path):
    write_waterbirds(tmp_path / "wb")
    assert len(open_dataset("toy:5")) == 5
    assert open_dataset(f"waterbirds:{tmp_path / 'wb'}:train").split == "train"
    assert isinstance(open_dataset(str(tmp_path / "wb")), ImageFolder)


# ---------------------------------------------------------------------------- vocabularies
def test_builtin_vocabularies():
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from hookedclip.data.vocab import english_vocabulary, image_label_words, vocabulary

    frequent = english_vocabulary("frequent", n_words=3000)
    assert 2000 < len(frequent) <= 3000 and len(set(frequent)) == len(frequent)
    assert all(w.isalpha() and len(w) >= 3 and w not in ENGLISH_STOP_WORDS for w in frequent)
    assert frequent.index("people") < frequent.index("dog")  # wordfreq's order, most frequent first
    curated = english_vocabulary("curated")
    assert len(curated) > 250 and "traffic light" in curated
    english = english_vocabulary(n_words=3000)
    assert len(set(english)) == len(english) and set(curated) <= set(english)
    labelled = [w for w in frequent if w in image_label_words()]  # the documented rule, in frequency order
    assert english[: len(labelled)] == labelled and set(english[len(labelled) :]) == set(curated) - set(labelled)
    assert {"dog", "car", "water", "running"} <= set(labelled)  # words of image (and action) class names
    assert not {"information", "however", "government"} & set(english)  # frequent, not picturable here
    assert len(english_vocabulary()) > len(english)  # n_words widens the pool
    assert vocabulary("english") == english_vocabulary() and vocabulary("english-curated") == curated
    with pytest.raises(ValueError, match="source must be one of"):
        english_vocabulary("wordnet")
    assert len(vocabulary("imagenet")) == 1000 and "a red shape" in vocabulary("toy")


def test_text_embeddings_are_cached_per_model_in_one_file(tmp_path, monkeypatch):
    import dataclasses
    import json

    from safetensors import safe_open

    from hookedclip import HookedCLIP
    from hookedclip.data.vocab import text_embeddings
    from hookedclip.identity import model_identity

    model = HookedCLIP.from_pretrained("toy")
    concepts = ["a red circle", "a blue square", "a dog"]
    first = text_embeddings(model, concepts, cache_dir=tmp_path)
    torch.testing.assert_close(first, model.encode_text(model.tokenize(concepts), normalize=True), rtol=0, atol=0)
    (file,) = (tmp_path / "text").iterdir()  # one safetensors file, named by the model identity
    identity = model_identity(model)
    assert file.suffix == ".safetensors" and file.name.startswith(f"{identity['config_hash']}-{identity['weights']}-")
    with safe_open(str(file), framework="pt") as f:
        assert list(f.keys()) == ["text_embedding"] and json.loads(f.metadata()["model"]) == identity
    monkeypatch.setattr(model, "encode_text", lambda *a, **k: pytest.fail("the cache was not used"))
    assert torch.equal(text_embeddings(model, concepts, cache_dir=tmp_path), first)
    half = HookedCLIP.from_pretrained("toy").half()  # the same checkpoint in fp16: the same identity
    monkeypatch.setattr(half, "encode_text", lambda *a, **k: pytest.fail("the cache was not used"))
    assert torch.equal(text_embeddings(half, concepts, cache_dir=tmp_path), first)
    monkeypatch.undo()

    text = dataclasses.replace(model.cfg.text, ln_eps=1e-3)
    model.cfg = dataclasses.replace(model.cfg, text=text)  # same weights, another config
    assert torch.equal(text_embeddings(model, concepts, cache_dir=tmp_path), first)
    assert len(list((tmp_path / "text").iterdir())) == 2  # not served from the other config's entry
    text_embeddings(model, concepts[:2], cache_dir=tmp_path)
    assert len(list((tmp_path / "text").iterdir())) == 3  # other concepts: another entry


def write_segmentation_mat_v73(path, n: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A MATLAB v7.3 file laid out like the released gtsegs_ijcv.mat: HDF5 behind a 512-byte
    MATLAB header, /value/img and /value/gt holding object references (gt entries are 1x1
    cells, i.e. a reference to a reference), arrays stored transposed."""
    h5py = pytest.importorskip("h5py")
    images, masks = random_segmentations(n, seed=1)
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        img = f.create_dataset("value/img", (n, 1), dtype=h5py.ref_dtype)
        gt = f.create_dataset("value/gt", (n, 1), dtype=h5py.ref_dtype)
        for k in range(n):
            img[k, 0] = refs.create_dataset(f"i{k}", data=images[k].transpose(2, 1, 0)).ref
            cell = refs.create_dataset(f"c{k}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = refs.create_dataset(f"g{k}", data=masks[k].transpose(1, 0)).ref
            gt[k, 0] = cell.ref
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Nov 23 00:00:00 2026 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02" + b"IM")
    return images, masks
