"""Image datasets read from local paths: image folders, Waterbirds, ImageNet val,
ImageNet-segmentation, and the toy world.

Every dataset is a map-style ``torch.utils.data.Dataset`` whose items are dicts::

    {"image": PIL.Image (RGB) or uint8 [H, W, 3], "label": int, "group": int, "id": str}

(``-1`` where a dataset has no label or group; ImageNet-segmentation adds ``"mask"``). With
``transform`` (normally ``model.preprocess``) the image is transformed on access;
:func:`hookedclip.data.extract.extract` applies the model's preprocessing itself. Each has
``fingerprint()``, a short hash of what it lists (paths and labels, not file contents),
recorded in an ActivationStore's manifest. A missing path raises ``FileNotFoundError``
saying what was expected there.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
WATERBIRDS_CLASSES = ("landbird", "waterbird")
WATERBIRDS_PLACES = ("land", "water")
WATERBIRDS_SPLITS = {"train": 0, "val": 1, "test": 2}


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: expected {what}")
    return path


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_image(path: Path):
    """An RGB PIL image (fully decoded here, so a truncated file fails now, not later)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class FileImages(torch.utils.data.Dataset):
    """Images at ``root / paths[i]`` with integer labels and groups (the base of the
    file-backed datasets below)."""

    def __init__(
        self,
        root: str | Path,
        paths: Sequence[str],
        labels: Sequence[int] | None = None,
        groups: Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
        transform: Callable | None = None,
    ) -> None:
        self.root, self.paths = Path(root), list(paths)
        self.labels = np.asarray(labels if labels is not None else [-1] * len(self.paths), dtype=np.int64)
        self.groups = np.asarray(groups if groups is not None else [-1] * len(self.paths), dtype=np.int64)
        self.classes = list(classes) if classes is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        image = load_image(self.root / self.paths[i])
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": int(self.labels[i]), "group": int(self.groups[i]), "id": self.paths[i]}

    def id_of(self, i: int) -> str:
        """The image's path relative to ``root`` (its id in a store)."""
        return self.paths[i]

    def fingerprint(self) -> str:
        return _fingerprint(type(self).__name__, self.paths, self.labels.tolist(), self.groups.tolist())


# ---------------------------------------------------------------------------- image folder
class ImageFolder(FileImages):
    """Any folder of images. With class subfolders (``root/CLASS/*.jpg``) labels are the
    sorted subfolder index and ``classes`` their names; a flat folder has label -1."""

    def __init__(self, root: str | Path, transform: Callable | None = None) -> None:
        root = _require(Path(root), "a folder of images (flat, or one subfolder per class)")
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder of images")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if classes:
            paths, labels = [], []
            for label, name in enumerate(classes):
                files = sorted(p for p in (root / name).rglob("*") if _is_image(p))
                paths += [str(p.relative_to(root)) for p in files]
                labels += [label] * len(files)
        else:
            paths, labels, classes = sorted(p.name for p in root.iterdir() if _is_image(p)), None, None
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root} or its class subfolders")
        super().__init__(root, paths, labels, None, classes, transform)


# ---------------------------------------------------------------------------- Waterbirds
class Waterbirds(FileImages):
    """Waterbirds (Sagawa et al. 2020) from its ``metadata.csv`` (columns ``img_filename``,
    ``y``, ``split``, ``place``): label ``y`` (0 landbird, 1 waterbird), group
    ``2 * y + place`` (0 landbird on land, 1 landbird on water, 2 waterbird on land,
    3 waterbird on water)."""

    def __init__(self, root: str | Path, split: str | None = "test", transform: Callable | None = None) -> None:
        root = Path(root)
        meta = _require(
            root / "metadata.csv",
            "Waterbirds' metadata.csv (columns img_filename, y, split, place) "
            f"in {root}, the folder of the released waterbird_complete95_forest2water2 images",
        )
        if split is not None and split not in WATERBIRDS_SPLITS:
            raise ValueError(f"split must be one of {list(WATERBIRDS_SPLITS)} or None (all), got {split!r}")
        with open(meta, newline="") as f:
            rows = list(csv.DictReader(f))
        missing = {"img_filename", "y", "split", "place"} - set(rows[0] if rows else {})
        if missing:
            raise ValueError(f"{meta} lacks the columns {sorted(missing)}")
        if split is not None:
            rows = [r for r in rows if int(r["split"]) == WATERBIRDS_SPLITS[split]]
        y = [int(r["y"]) for r in rows]
        groups = [2 * int(r["y"]) + int(r["place"]) for r in rows]
        super().__init__(root, [r["img_filename"] for r in rows], y, groups, WATERBIRDS_CLASSES, transform)
        self.split = split

    @staticmethod
    def group_names() -> list[str]:
        return [f"{c} on {p}" for c in WATERBIRDS_CLASSES for p in WATERBIRDS_PLACES]


# ---------------------------------------------------------------------------- ImageNet val
_WNID = re.compile(r"^n\d{8}$")


class ImageNetVal(FileImages):
    """ImageNet (ILSVRC2012) validation images with labels in the standard class order
    (sorted WordNet ids, the order of open_clip's ``IMAGENET_CLASSNAMES``). Three layouts:

    - ``root/n01440764/*.JPEG``: one folder per WordNet id (all 1000 must be present,
      otherwise the order cannot be the standard one);
    - a flat ``root`` with ``labels=``: a text file of ``FILENAME LABEL`` lines with labels
      already in the standard order (e.g. Caffe's ``val.txt``);
    - a flat ``root`` with ``devkit=``: the ``ILSVRC2012_devkit_t12`` folder; its
      ``data/ILSVRC2012_validation_ground_truth.txt`` (ILSVRC ids, by file number) is
      mapped to the standard order through ``data/meta.mat``.
    """

    def __init__(
        self,
        root: str | Path,
        labels: str | Path | None = None,
        devkit: str | Path | None = None,
        transform: Callable | None = None,
    ) -> None:
        from hookedclip.data.vocab import imagenet_classnames

        root = _require(Path(root), "the ILSVRC2012 validation images (flat, or one folder per WordNet id)")
        wnids = sorted(d.name for d in root.iterdir() if d.is_dir() and _WNID.match(d.name))
        if wnids:
            paths, targets = self._from_folders(root, wnids)
        elif labels is not None:
            paths, targets = self._from_labels_file(Path(labels))
        elif devkit is not None:
            paths, targets = self._from_devkit(root, Path(devkit))
        else:
            raise FileNotFoundError(
                f"{root} has no class folders (n01440764/, ...) and no labels were given: pass labels= a file of "
                "'FILENAME LABEL' lines (standard class order) or devkit= the ILSVRC2012_devkit_t12 folder "
                "(data/ILSVRC2012_validation_ground_truth.txt and data/meta.mat)"
            )
        super().__init__(root, paths, targets, None, imagenet_classnames(), transform)

    @staticmethod
    def _from_folders(root: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
        if len(wnids) != 1000:
            raise ValueError(
                f"{root} has {len(wnids)} WordNet-id class folders; the standard class order needs "
                "all 1000 (pass labels= or devkit= for a subset)"
            )
        paths, targets = [], []
        for label, wnid in enumerate(wnids):
            files = sorted(p.name for p in (root / wnid).iterdir() if _is_image(p))
            paths += [f"{wnid}/{name}" for name in files]
            targets += [label] * len(files)
        return paths, targets

    @staticmethod
    def _from_labels_file(path: Path) -> tuple[list[str], list[int]]:
        _require(path, "a text file of 'FILENAME LABEL' lines (labels 0-999 in the standard class order)")
        paths, targets = [], []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{n}: expected 'FILENAME LABEL', got {line!r}")
            paths.append(parts[0])
            targets.append(int(parts[1]))
        return paths, targets

    @staticmethod
    def _from_devkit(root: Path, devkit: Path) -> tuple[list[str], list[int]]:
        from scipy.io import loadmat

        gt = _require(
            devkit / "data" / "ILSVRC2012_validation_ground_truth.txt",
            "the devkit's ground truth (one ILSVRC2012_ID per line, by validation file number)",
        )
        meta = _require(devkit / "data" / "meta.mat", "the devkit's meta.mat (synsets with ILSVRC2012_ID and WNID)")
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        leaves = synsets[np.asarray(synsets["num_children"], dtype=np.int64) == 0]
        wnid_of = {int(i): str(w) for i, w in zip(leaves["ILSVRC2012_ID"], leaves["WNID"])}
        standard = {w: k for k, w in enumerate(sorted(wnid_of.values()))}
        ids = [int(x) for x in gt.read_text().split()]
        files = sorted(p.name for p in root.iterdir() if _is_image(p))
        if len(files) != len(ids):
            raise ValueError(f"{root} has {len(files)} images, the ground truth {len(ids)} labels")
        return files, [standard[wnid_of[i]] for i in ids]


# ---------------------------------------------------------------------------- ImageNet-segmentation
class ImageNetSegmentation(torch.utils.data.Dataset):
    """ImageNet-segmentation (Guillaumin et al. 2014), the ``gtsegs_ijcv.mat`` file used by
    Chefer et al.: 4,276 images with binary foreground masks. Items add ``"mask"``: bool
    ``[H, W]`` at the image's own resolution (see :func:`preprocess_mask`).

    The released file is MATLAB v7.3 (HDF5) and needs ``h5py`` (``pip install h5py``);
    older-format files (``value.img`` / ``value.gt`` cells) are read with ``scipy.io``.
    """

    def __init__(self, path: str | Path, transform: Callable | None = None) -> None:
        self.path = _require(Path(path), "gtsegs_ijcv.mat (ImageNet-segmentation images and masks)")
        self.transform = transform
        self._h5 = None
        self._cells = None
        self._n = self._open()

    def _open(self) -> int:
        from scipy.io import loadmat

        try:
            value = loadmat(str(self.path), squeeze_me=False)["value"][0, 0]
        except NotImplementedError:  # scipy: "Please use HDF reader for matlab v7.3 files"
            try:
                import h5py
            except ImportError as exc:
                raise ImportError(
                    f"{self.path} is a MATLAB v7.3 (HDF5) file: reading it needs h5py "
                    "(pip install h5py, or pip install 'hookedclip[data]')"
                ) from exc
            with h5py.File(self.path, "r") as f:
                return len(f["/value/img"])
        self._cells = (value["img"].ravel(), value["gt"].ravel())
        return len(self._cells[0])

    def __len__(self) -> int:
        return self._n

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cells is not None:
            return _unwrap(self._cells[0][i]), _unwrap(self._cells[1][i])
        import h5py

        if self._h5 is None:  # opened lazily, once per (worker) process
            self._h5 = h5py.File(self.path, "r")
        f = self._h5
        image = np.array(f[f["/value/img"][i, 0]]).transpose(2, 1, 0)  # HDF5 stores MATLAB arrays transposed
        mask = np.array(f[f[f["/value/gt"][i, 0]][0, 0]]).transpose(1, 0)
        return image, mask

    def __getitem__(self, i: int) -> dict:
        if not -self._n <= i < self._n:
            raise IndexError(f"index {i} out of range for {self._n} images")
        i %= self._n
        image, mask = self._read(i)
        image = np.ascontiguousarray(image.astype(np.uint8))
        if image.ndim == 2:  # a few ImageNet images are greyscale
            image = np.repeat(image[..., None], 3, axis=-1)
        if self.transform is not None:
            from PIL import Image

            image = self.transform(Image.fromarray(image))
        return {"image": image, "mask": np.asarray(mask) > 0, "label": -1, "group": -1, "id": str(i)}

    def fingerprint(self) -> str:
        stat = self.path.stat()
        return _fingerprint(type(self).__name__, self.path.name, stat.st_size, self._n)

    def __getstate__(self):  # an open HDF5 handle does not pickle
        state = dict(self.__dict__)
        state["_h5"] = None
        return state


def _unwrap(x) -> np.ndarray:
    """MATLAB cells load as nested object arrays: descend to the numeric array."""
    while isinstance(x, np.ndarray) and x.dtype == object:
        x = x.ravel()[0]
    return np.asarray(x)


def preprocess_mask(mask: np.ndarray, image_size: int) -> torch.Tensor:
    """A mask resized and centre-cropped like CLIP's image preprocessing (shorter side to
    ``image_size``, centre crop), nearest neighbour: bool ``[image_size, image_size]``."""
    from hookedclip.data.masks import resize_mask

    return resize_mask(torch.from_numpy(np.asarray(mask, dtype=np.uint8)), image_size, "aligned")


# ---------------------------------------------------------------------------- toy world
class ToyImages(torch.utils.data.Dataset):
    """A :class:`~hookedclip.toy.world.ToyWorld` as image items: label = the index of
    ``attribute``'s value, group = the world's spurious group (-1 without one)."""

    def __init__(self, world, attribute: str = "shape", transform: Callable | None = None) -> None:
        self.world, self.attribute, self.transform = world, attribute, transform

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, i: int) -> dict:
        item = self.world[i]
        image = item["image"]
        if self.transform is not None:
            from PIL import Image

            image = self.transform(Image.fromarray(image))
        return {
            "image": image,
            "label": item["labels"][self.attribute],
            "group": item["group"],
            "id": str(item["index"]),
        }

    def fingerprint(self) -> str:
        from hookedclip.toy.world import WORLD_VERSION

        w = self.world
        return _fingerprint(
            "toy",
            WORLD_VERSION,
            w.n,
            w.seed,
            w.split,
            w.image_size,
            repr(w.spurious),
            w.group_balanced,
            repr(w.spurious_in_train),
            self.attribute,
        )


def toy_dataset(n: int = 1024, seed: int = 0, split: str = "test", **world_kw) -> ToyImages:
    from hookedclip.toy.world import ToyWorld

    return ToyImages(ToyWorld(n, seed=seed, split=split, **world_kw))


# ---------------------------------------------------------------------------- from a string
def open_dataset(spec: str) -> torch.utils.data.Dataset:
    """The command line's ``--data``: ``toy[:N]`` (test split, seed 0), ``waterbirds:ROOT[:SPLIT]``,
    ``imagenet-val:ROOT[:LABELS_OR_DEVKIT]``, ``imagenet-seg:FILE.mat``, or a folder of images."""
    kind, _, rest = spec.partition(":")
    if kind == "toy":
        return toy_dataset(int(rest) if rest else 1024)
    if kind == "waterbirds":
        root, _, split = rest.partition(":")
        return Waterbirds(root, split or "test")
    if kind == "imagenet-val":
        root, _, extra = rest.partition(":")
        if not extra:
            return ImageNetVal(root)
        return ImageNetVal(root, devkit=extra) if Path(extra).is_dir() else ImageNetVal(root, labels=extra)
    if kind == "imagenet-seg":
        return ImageNetSegmentation(rest)
    return ImageFolder(spec)
