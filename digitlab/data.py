"""Datasets, splits and scalers: everything between files on disk and float tensors.

Datasets (``load_dataset(name, data_dir=None)``) hold uint8 images ``(N, H, W)``, int64 labels,
class names and the official train/test split:

- ``mnist``: the four official IDX files ship inside the package (``digitlab/_data/mnist/``), so it
  works offline. An explicit ``data_dir`` (the folder with the files, or its parent with an ``mnist/``
  sub-folder) is used instead when it holds them.
- ``fashion-mnist``: searched in this order, the first folder with all four files wins:
  1. the explicit ``data_dir`` (the folder with the files, or a parent with a ``fashion-mnist/`` sub-folder),
  2. ``$DIGITLAB_DATA_DIR/fashion-mnist``,
  3. the user cache ``$DIGITLAB_CACHE_DIR/fashion-mnist`` (default ``~/.cache/digitlab/fashion-mnist``),
  4. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package),
  5. otherwise it is downloaded into the cache from ``FASHION_MIRRORS`` (or the comma-separated
     ``$DIGITLAB_FASHION_MIRRORS``), each file written atomically and checked; any failure of a mirror
     (HTTP error, no connection, timeout, an HTML page instead of gzip, a checksum mismatch) moves on to
     the next one. When every place fails the error names all of them and how to provide the files.
- ``usps``: the USPS zip-code digits (``zip.train.gz``: a label then 256 grey values -1..1 a line),
  never shipped inside the package: found in the explicit ``data_dir`` (the folder with the file, or a
  parent with a ``usps/`` sub-folder), ``$DIGITLAB_DATA_DIR/usps`` or ``$DIGITLAB_CACHE_DIR/usps``. Each
  16x16 digit is brought to 28x28 the MNIST way (``preprocess.center_digit``: ink 0-255, longest side
  20 px keeping the aspect ratio, centre of mass at (14, 14)); the converted array is cached under
  ``<cache>/usps`` by the file's SHA-256. Only the training split exists here, so the dataset's "test"
  part is our own held-out validation split: a stratified 1,500 of the 7,291, drawn with
  ``USPS_VAL_SEED`` (``usps_split``). No training set ever contains it.
- ``A+B`` (e.g. ``mnist+usps``): the training parts of several datasets of the same classes and image
  size, concatenated; the test part is the first dataset's (so ``mnist+usps`` reports MNIST test).
  ``NAME*K`` repeats a dataset's training part K times (``mnist+usps*3``: a small set weighs more).
- ``rendered:NAME`` (``mnist`` or ``usps``): NAME's training digits drawn on paper as photos and read back
  through ``digitlab.preprocess`` (``realism.render_through_preprocess``, seed 0), computed once (~10-40 ms
  a digit) and cached under ``<cache>/rendered``; its test part is NAME's.
- ``restyled:NAME`` (``mnist`` or ``usps``): only NAME's training 1s and 7s, redrawn the continental-European
  way (``realism.european_styles``: a long up-stroke on each 1, a crossbar on each 7), seed 0; its test
  part is NAME's. MNIST's and USPS's writers are American, and their 7s look like a European 1.
- ``digits``: scikit-learn's 8x8 digits (values 0..16). It has no official split, so ours is a
  stratified 80/20 split with seed 42 (1,437 train / 360 test).
- ``folder:PATH``: one sub-folder per class (class names = sorted folder names), images of any common
  format turned into 28x28 uint8 the MNIST way. ``train/`` and ``test/`` sub-folders give the split,
  otherwise a stratified 80/20 split with seed 42.
- ``openml:NAME``: ``sklearn.datasets.fetch_openml`` cached in ``<cache>/openml``; 70,000 images are
  split 60,000/10,000 in OpenML's order (the order of ``mnist_784``), others stratified 80/20.

Every IDX file is checked against the official MD5 (of the ``.gz`` or of the uncompressed bytes, see
``CHECKSUMS``) and decoded once: decoded arrays are kept in memory and in ``<cache>/idx/*.npy`` (named
by the file's MD5, written atomically), so a warm load of MNIST takes a few tens of milliseconds.

Splits (``split(ds, scheme, val_size=5000, seed=42)``) reproduce the course notebooks:

- ``default``: the official test set; a stratified validation set of ``min(val_size, 10% of train)``
  images (the cap keeps the 1,437 training digits from being swallowed: digits get 143).
- ``notebook-000``: train and test pooled (OpenML's order), a stratified test set of 5,000, then a
  stratified validation set of 5,000 from the rest, both with ``random_state=seed`` (60,000/5,000/5,000).
- ``notebook-001``: the first 70% of the official training set for training, the last 30% for
  validation (TFDS ``train[:70%]`` / ``train[70%:]``), the official test set (42,000/18,000/10,000).
- ``notebook-003``: the first 5,000 training images for validation, the rest for training, the
  official test set (55,000/5,000/10,000).
- ``none``: no validation set (empty arrays), for final fits on all training data.

Scalers (``make_scaler``) are fitted on the training split only and map uint8 batches to float32
tensors as ``x * a + b`` with precomputed per-device tensors.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import math
import os
import re
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitlab.errors import ConfigError, DatasetError, DigitlabError
from digitlab.utils import atomic_write

DATASETS = ("mnist", "fashion-mnist", "digits", "folder:PATH", "openml:NAME", "usps", "rendered:NAME", "restyled:NAME",
            "A+B")
DIGIT_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# Official MD5s per file: (of the .gz the mirrors serve, of the uncompressed bytes). Either is accepted
# because repackaged copies (Debian, ../shared/datasets) re-compress the same bytes.
CHECKSUMS: dict[str, dict[str, tuple[str, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
        "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
        "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
    },
}
FASHION_MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
]
USPS_FILE = "zip.train.gz"
USPS_VAL_SIZE = 1500
USPS_VAL_SEED = 17  # the held-out USPS split: change it and every figure measured on it changes
SYSTEM_DATA_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}
DOWNLOAD_TIMEOUT = 30.0  # seconds per socket operation
MAX_IDX_BYTES = 512 * 2**20  # refuse to inflate a gzip bomb from a rogue mirror
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(repr=False, eq=False)
class Dataset:
    """Images ``(N, H, W)`` uint8 and labels int64 (indices into ``classes``), official split."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    max_value: int = 255

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, *self.train_images.shape[1:3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
                f"shape={self.train_images.shape[1:]}, classes={self.num_classes})")


def cache_dir() -> Path:
    """``$DIGITLAB_CACHE_DIR`` or ``~/.cache/digitlab``."""
    return Path(os.environ.get("DIGITLAB_CACHE_DIR") or "~/.cache/digitlab").expanduser()


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load ``mnist``, ``fashion-mnist``, ``digits``, ``folder:PATH`` or ``openml:NAME`` (see module doc)."""
    key = name.strip()
    kind = key.lower().replace("_", "-")
    if "+" in key and not kind.startswith(("folder:", "openml:")):
        return _load_combined([part for part in key.split("+")], data_dir)
    if kind == "usps":
        return load_usps(data_dir)
    if kind.startswith("rendered:") and key[9:]:
        return _load_rendered(key[9:], data_dir)
    if kind.startswith("restyled:") and key[9:]:
        return _load_restyled(key[9:], data_dir)
    if kind == "mnist":
        return _load_idx_dataset("mnist", DIGIT_CLASSES, _find_mnist(data_dir))
    if kind in ("fashion-mnist", "fashionmnist", "fashion"):
        return _load_idx_dataset("fashion-mnist", FASHION_CLASSES, _find_fashion(data_dir))
    if kind in ("digits", "sklearn-digits"):
        return _load_digits()
    if kind.startswith("folder:") and key[7:]:
        return _load_folder(Path(key[7:]).expanduser())
    if kind.startswith("openml:") and key[7:]:
        return _load_openml(key[7:])
    raise DatasetError(f"Unknown dataset '{name}': use one of {', '.join(DATASETS)}.")


# --- IDX files -----------------------------------------------------------------------------------


def read_idx(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian array, validating the header.

    A truncated, garbled or malformed file raises ``DatasetError`` naming ``name`` and the fault.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), name or "IDX data"
    else:
        name = name or str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise DatasetError(f"Cannot read {name} ({exc.strerror}): check the path and permissions.") from exc
    array = _parse_idx(_gunzip(data, name), name)
    return array if array.flags.writeable else array.copy()


def _gunzip(data: bytes, name: str) -> bytes:
    if data[:2] != GZIP_MAGIC:
        return data
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_IDX_BYTES)
    except zlib.error as exc:
        raise DatasetError(f"{name} is not a valid gzip file ({exc}): replace it with a good copy.") from exc
    if inflater.unconsumed_tail:
        raise DatasetError(f"{name} inflates to more than {MAX_IDX_BYTES >> 20} MiB, far more than any "
                           "IDX dataset: replace it with the official file.")
    if not inflater.eof:
        raise DatasetError(f"{name} is a truncated gzip file (it ends before the end of its data): "
                           "replace it with a complete copy.")
    return out


def _parse_idx(data: bytes, name: str) -> np.ndarray:
    """Header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 each."""
    if len(data) < 4:
        raise DatasetError(f"{name} is too short to be an IDX file ({len(data)} bytes): replace it.")
    if data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{name} is not an IDX file (its first two bytes are 0x{data[:2].hex()}, not 0x0000): "
                           "check that it is the right file.")
    if data[2] not in IDX_TYPES:
        raise DatasetError(f"{name} has an unknown IDX type code 0x{data[2]:02x} (valid: "
                           f"{', '.join(f'0x{c:02x}' for c in IDX_TYPES)}): replace it with the official file.")
    ndim, dtype = data[3], np.dtype(IDX_TYPES[data[2]])
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"{name} has a broken IDX header ({ndim} dimensions in {len(data)} bytes): replace it.")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        what = "is truncated or its header over-claims" if found < expected else "has extra bytes after"
        raise DatasetError(f"{name} {what} its data: the header says {' x '.join(map(str, shape))} "
                           f"({expected} bytes) but {found} bytes follow; replace it with the official file.")
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array if dtype.byteorder in "=|" else array.astype(dtype.newbyteorder("="))


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _check_md5(name: str, dataset: str, file_md5: str, raw_md5: str, expected: Sequence[str]) -> None:
    if file_md5 not in expected and raw_md5 not in expected:
        raise DatasetError(f"{name} does not match the official {dataset} checksum (MD5 {raw_md5}): it is "
                           f"corrupt or not the official {dataset} file; replace it with the official one.")


def _load_checked(path: Path, dataset: str) -> np.ndarray:
    """A checked, decoded IDX file as a read-only array (shared by every caller in this process)."""
    stem = path.name.removesuffix(".gz")
    expected = CHECKSUMS[dataset][stem]
    st = path.stat()
    return _load_checked_cached(str(path), st.st_size, st.st_mtime_ns, dataset, tuple(expected))


@functools.lru_cache(maxsize=16)
def _load_checked_cached(path: str, size: int, mtime_ns: int, dataset: str,
                         expected: tuple[str, ...]) -> np.ndarray:
    try:
        raw_file = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"Cannot read {path} ({exc.strerror}): check its permissions.") from exc
    file_md5 = _md5(raw_file)
    # The decoded array is cached under the file's MD5 plus the MD5 of its uncompressed bytes, so a
    # warm load skips inflating and parsing yet still checks the checksum table.
    npy_dir = cache_dir() / "idx"
    for hit in sorted(npy_dir.glob(f"{file_md5}-*.npy")):
        _check_md5(path, dataset, file_md5, hit.stem.partition("-")[2], expected)
        try:
            array = np.load(hit, allow_pickle=False)
        except (OSError, ValueError):
            continue  # a damaged cache entry: decode the file again
        array.flags.writeable = False
        return array
    data = _gunzip(raw_file, path)
    raw_md5 = _md5(data) if data is not raw_file else file_md5
    _check_md5(path, dataset, file_md5, raw_md5, expected)
    array = _parse_idx(data, path)
    try:
        atomic_write(npy_dir / f"{file_md5}-{raw_md5}.npy", lambda p: _save_npy(p, array))
    except OSError:
        pass  # a read-only cache only costs speed
    array.flags.writeable = False
    return array


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append ".npy" to a temp file name
        np.save(fh, array, allow_pickle=False)


def _load_idx_dataset(dataset: str, classes: list[str], files: dict[str, Path]) -> Dataset:
    parts = []
    for split_name in ("train", "t10k"):
        images_path, labels_path = files[f"{split_name}-images-idx3-ubyte"], files[f"{split_name}-labels-idx1-ubyte"]
        images, labels = _load_checked(images_path, dataset), _load_checked(labels_path, dataset)
        if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
            raise DatasetError(f"{images_path} and {labels_path} are not an image file (N x H x W uint8) and a "
                               "label file (N): replace them with the official files.")
        if len(images) != len(labels):
            raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                               "labels: the two files do not belong together; replace them with the official pair.")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DatasetError(f"{labels_path} has labels outside 0..{len(classes) - 1}: replace it.")
        parts += [images.copy(), labels.astype(np.int64)]  # copies: callers may write into their arrays
    return Dataset(dataset, *parts, classes=list(classes), max_value=255)


# --- where the files are -------------------------------------------------------------------------


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (``.gz`` or uncompressed), or None unless all are there."""
    found = {}
    for stem in IDX_STEMS:
        path = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
        if path is None:
            return None
        found[stem] = path
    return found


def _explicit_dirs(data_dir: str | Path | None, sub: str) -> list[Path]:
    return [] if data_dir is None else [Path(data_dir).expanduser(), Path(data_dir).expanduser() / sub]


def _find_mnist(data_dir: str | Path | None) -> dict[str, Path]:
    for folder in _explicit_dirs(data_dir, "mnist"):
        if files := _idx_files(folder):
            return files
    packaged = resources.files("digitlab") / "_data" / "mnist"
    if isinstance(packaged, Path) and (files := _idx_files(packaged)):
        return files
    raise DatasetError(f"The packaged MNIST files are missing from {packaged}: reinstall digitlab or pass "
                       "--data-dir with a folder holding the four MNIST IDX files.")


def _fashion_dirs(data_dir: str | Path | None) -> list[Path]:
    folders = _explicit_dirs(data_dir, "fashion-mnist")
    if env := os.environ.get("DIGITLAB_DATA_DIR"):
        folders.append(Path(env).expanduser() / "fashion-mnist")
    folders.append(cache_dir() / "fashion-mnist")
    return folders + list(SYSTEM_DATA_DIRS["fashion-mnist"])


def _find_fashion(data_dir: str | Path | None) -> dict[str, Path]:
    folders = _fashion_dirs(data_dir)
    for folder in folders:
        if files := _idx_files(folder):
            return files
    target = cache_dir() / "fashion-mnist"
    failures = _download("fashion-mnist", target, _mirrors())
    if failures is None:
        files = _idx_files(target)
        assert files is not None
        return files
    searched = [str(f) for f in folders]
    if not os.environ.get("DIGITLAB_DATA_DIR"):
        searched.insert(len(folders) - 1 - len(SYSTEM_DATA_DIRS["fashion-mnist"]),
                        "$DIGITLAB_DATA_DIR/fashion-mnist ($DIGITLAB_DATA_DIR is not set)")
    raise DatasetError(
        f"Fashion-MNIST was not found in {', '.join(searched)} and could not be downloaded ({'; '.join(failures)}): "
        "install it with `apt-get install dataset-fashion-mnist`, put the four files "
        f"({', '.join(s + '.gz' for s in IDX_STEMS)}) into one of those folders, or set DIGITLAB_DATA_DIR "
        "to a folder whose fashion-mnist/ sub-folder holds them.")


def _mirrors() -> list[str]:
    env = os.environ.get("DIGITLAB_FASHION_MIRRORS")
    return [m.strip() for m in env.split(",") if m.strip()] if env else list(FASHION_MIRRORS)


def _download(dataset: str, target: Path, mirrors: Sequence[str]) -> list[str] | None:
    """Fetch the missing IDX files into ``target``; None on success, else one line per failed try."""
    failures: list[str] = []
    for stem in IDX_STEMS:
        if any((target / n).is_file() for n in (f"{stem}.gz", stem)):
            continue
        for base in mirrors:
            url = base.rstrip("/") + f"/{stem}.gz"
            try:
                _fetch(url, target / f"{stem}.gz", dataset, CHECKSUMS[dataset][stem])
                break
            except Exception as exc:  # any fault of a mirror sends us to the next one
                failures.append(f"{url}: {_reason(exc)}")
        else:
            return failures or ["no mirror configured"]
    return None


def _fetch(url: str, dest: Path, dataset: str, expected: Sequence[str]) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    def write(tmp: Path) -> None:
        request = urllib.request.Request(url, headers={"User-Agent": "digitlab"})
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with (urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response, open(tmp, "wb") as fh,
              Progress(*columns, console=Console(stderr=True)) as progress):
            total = int(response.headers.get("Content-Length") or 0) or None
            task = progress.add_task(f"{dest.name} from {url.split('/')[2]}", total=total)
            while chunk := response.read(1 << 16):
                fh.write(chunk)
                progress.advance(task, len(chunk))
        data = tmp.read_bytes()
        if data[:2] != GZIP_MAGIC:
            kind = "an HTML page" if data.lstrip()[:1] == b"<" else f"{len(data)} bytes"
            raise DatasetError(f"served {kind}, not a gzip file")
        raw = _gunzip(data, url)
        _check_md5(url, dataset, _md5(data), _md5(raw), expected)
        _parse_idx(raw, url)

    atomic_write(dest, write)


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) if isinstance(exc, DigitlabError) else f"{type(exc).__name__}: {exc}"


# --- USPS and combined datasets ------------------------------------------------------------------


def _usps_dirs(data_dir: str | Path | None) -> list[Path]:
    folders = _explicit_dirs(data_dir, "usps")
    if env := os.environ.get("DIGITLAB_DATA_DIR"):
        folders.append(Path(env).expanduser() / "usps")
    return folders + [cache_dir() / "usps"]


def _find_usps(data_dir: str | Path | None) -> Path:
    folders = _usps_dirs(data_dir)
    for folder in folders:
        for name in (USPS_FILE, USPS_FILE.removesuffix(".gz")):
            if (folder / name).is_file():
                return folder / name
    searched = [str(f) for f in folders]
    if not os.environ.get("DIGITLAB_DATA_DIR"):
        searched.insert(len(folders) - 1, "$DIGITLAB_DATA_DIR/usps ($DIGITLAB_DATA_DIR is not set)")
    raise DatasetError(f"USPS ({USPS_FILE}) was not found in {', '.join(searched)}: put the file into one of "
                       "those folders, pass --data-dir, or set DIGITLAB_DATA_DIR to a folder whose usps/ "
                       "sub-folder holds it.")


def parse_usps(data: bytes, name: str = USPS_FILE) -> tuple[np.ndarray, np.ndarray]:
    """The text format of ``zip.train``: one digit a line, its label then 256 values -1 (paper) .. 1 (ink)."""
    try:
        table = np.loadtxt(_gunzip(data, name).decode("ascii").splitlines(), dtype=np.float32, ndmin=2)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{name} is not a USPS file (a label then 256 numbers a line): {exc}; "
                           "replace it with a good copy.") from exc
    if table.shape[1] != 257 or len(table) == 0:
        raise DatasetError(f"{name} has {table.shape[1] - 1} values a line, not 256 (16x16): replace it.")
    labels = table[:, 0]
    if np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{name} has labels outside 0..9: replace it with a good copy.")
    grey = np.clip((table[:, 1:].reshape(-1, 16, 16) + 1.0) / 2.0, 0.0, 1.0)
    return grey, labels.astype(np.int64)


def usps_to_mnist(grey: np.ndarray) -> np.ndarray:
    """16x16 ink images in 0..1 -> uint8 28x28 the way MNIST (and ``digitlab.preprocess``) does it."""
    from digitlab.preprocess import center_digit

    # USPS paper is not exactly -1 everywhere: a faint floor would widen the crop box.
    return np.stack([center_digit(np.where(g > 0.05, g, 0.0)) for g in grey]).astype(np.uint8)


def usps_split(labels: np.ndarray, seed: int = USPS_VAL_SEED, val_size: int = USPS_VAL_SIZE
               ) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out validation indices of USPS: stratified, fixed by ``seed``."""
    return _stratified_split(labels, val_size, seed)


def usps_val_raw(data_dir: str | Path | None = None, seed: int = USPS_VAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The held-out USPS digits as scanned: grey ``(1500, 16, 16)`` float ink 0..1 and their labels."""
    path = _find_usps(data_dir)
    grey, labels = parse_usps(path.read_bytes(), str(path))
    _, val = usps_split(labels, seed)
    return grey[val], labels[val]


def load_usps(data_dir: str | Path | None = None, seed: int = USPS_VAL_SEED) -> Dataset:
    """USPS as a Dataset: train = 5,791 digits, test = the 1,500 held out by ``usps_split``."""
    path = _find_usps(data_dir)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"Cannot read {path} ({exc.strerror}): check its permissions.") from exc
    digest = hashlib.sha256(raw).hexdigest()
    npz = cache_dir() / "usps" / f"converted-{digest[:24]}.npz"
    try:
        with np.load(npz) as saved:
            images, labels = saved["images"], saved["labels"]
    except (OSError, ValueError, KeyError):
        grey, labels = parse_usps(raw, str(path))
        images = usps_to_mnist(grey)
        try:
            atomic_write(npz, lambda p: _save_npz(p, images=images, labels=labels))
        except OSError:
            pass  # a read-only cache only costs speed
    train, val = usps_split(labels, seed)
    return Dataset("usps", images[train], labels[train], images[val], labels[val], list(DIGIT_CLASSES), 255)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to a temp file name
        np.savez(fh, **arrays)


def _cached_derivation(kind: str, sources: tuple[np.ndarray, ...], keys: tuple[str, ...],
                       compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, kept under ``<cache>/kind`` by the SHA-256 of ``sources``: derived
    datasets are made once per set of source digits (rendering takes ~10-40 ms a digit)."""
    digest = hashlib.sha256(b"".join(a.tobytes() for a in sources)).hexdigest()[:24]
    npz = cache_dir() / kind / f"{digest}-seed0.npz"
    try:
        with np.load(npz) as saved:
            return {key: saved[key] for key in keys}
    except (OSError, ValueError, KeyError):
        arrays = compute()
        try:
            atomic_write(npz, lambda p: _save_npz(p, **arrays))
        except OSError:
            pass  # a read-only cache only costs time
        return arrays


def _load_rendered(name: str, data_dir: str | Path | None) -> Dataset:
    """``name``'s training digits drawn on paper as photos and read back by ``preprocess``, cached once."""
    from digitlab.realism import render_through_preprocess

    base = load_dataset(name, data_dir)
    if base.train_images.shape[1:] != (28, 28) or base.max_value != 255:
        raise DatasetError(f"rendered:{name} needs 28x28 digits in 0..255, and {base.name} is not: use mnist or usps.")
    images = _cached_derivation("rendered", (base.train_images,), ("images",), lambda: {
        "images": render_through_preprocess(base.train_images, seed=0)})["images"]
    return Dataset(f"rendered:{base.name}", images, base.train_labels.copy(), base.test_images, base.test_labels,
                   list(base.classes), base.max_value)


def _load_restyled(name: str, data_dir: str | Path | None) -> Dataset:
    """``name``'s training 1s and 7s written the continental-European way (``realism.european_styles``), cached."""
    from digitlab.realism import european_styles

    base = load_dataset(name, data_dir)
    if base.train_images.shape[1:] != (28, 28) or base.max_value != 255 or base.classes != DIGIT_CLASSES:
        raise DatasetError(f"restyled:{name} needs 28x28 digits 0-9 in 0..255, and {base.name} is not: "
                           "use mnist or usps.")

    def restyle() -> dict[str, np.ndarray]:
        images, labels = european_styles(base.train_images, base.train_labels, seed=0)
        return {"images": images, "labels": labels}

    arrays = _cached_derivation("restyled", (base.train_images, base.train_labels), ("images", "labels"),
                                restyle)
    return Dataset(f"restyled:{base.name}", arrays["images"], arrays["labels"], base.test_images, base.test_labels,
                   list(base.classes), base.max_value)


def _load_combined(names: list[str], data_dir: str | Path | None) -> Dataset:
    names = [n.strip() for n in names]
    if len(names) < 2 or not all(names):
        raise DatasetError(f"Dataset '{'+'.join(names)}' must name two or more datasets joined by '+', "
                           "for example mnist+usps.")
    repeats = []
    for i, n in enumerate(names):
        base, star, times = n.rpartition("*")
        if star and times.strip().isdigit() and int(times) >= 1:
            names[i], n = base.strip(), base.strip()
            repeats.append(int(times))
        else:
            repeats.append(1)
    parts = [load_dataset(n, data_dir) for n in names]
    first = parts[0]
    for ds in parts[1:]:
        if ds.classes != first.classes or ds.train_images.shape[1:] != first.train_images.shape[1:] \
                or ds.max_value != first.max_value:
            raise DatasetError(f"Datasets {first.name} and {ds.name} cannot be combined: they differ in classes, "
                               "image size or pixel range.")
    return Dataset("+".join(ds.name + (f"*{k}" if k > 1 else "") for ds, k in zip(parts, repeats, strict=True)),
                   np.concatenate([ds.train_images for ds, k in zip(parts, repeats, strict=True) for _ in range(k)]),
                   np.concatenate([ds.train_labels for ds, k in zip(parts, repeats, strict=True) for _ in range(k)]),
                   first.test_images, first.test_labels, list(first.classes), first.max_value)


# --- other sources ---------------------------------------------------------------------------------


def _stratified_split(labels: np.ndarray, test_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices; stratified when every class can be, else a plain shuffled split.

    The answer is kept in ``<cache>/splits``, keyed by the labels, the sizes, the seed and the
    scikit-learn version: importing scikit-learn alone costs ~1.5 s, a tenth of a fast training run,
    and the split is all the run needs it for before training starts.
    """
    labels = np.ascontiguousarray(labels)
    key = hashlib.sha256(labels.tobytes() + str((labels.dtype.str, test_size, seed)).encode()).hexdigest()[:24]
    path = cache_dir() / "splits" / f"{key}-sklearn{_sklearn_version()}.npz"
    try:
        with np.load(path) as saved:
            return saved["train"], saved["test"]
    except (OSError, ValueError, KeyError):
        pass  # not computed yet, or a damaged entry: split again
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    try:
        train, test = train_test_split(index, test_size=test_size, stratify=labels, random_state=seed)
    except ValueError:  # a class with one image, or fewer test slots than classes
        train, test = train_test_split(index, test_size=test_size, random_state=seed)
    try:
        atomic_write(path, lambda tmp: _save_npz(tmp, train=train, test=test))
    except OSError:
        pass  # a read-only cache only costs speed
    return train, test


def _sklearn_version() -> str:
    """scikit-learn's version without importing it (the split it draws may change between versions)."""
    from importlib.metadata import version

    return version("scikit-learn")


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images.astype(np.uint8), digits.target.astype(np.int64)
    train, test = _stratified_split(labels, 0.2, 42)
    return Dataset("digits", images[train], labels[train], images[test], labels[test], DIGIT_CLASSES[:], 16)


def _preprocess_hook() -> Any:
    """``digitlab.preprocess.preprocess`` when that module exists, else None (use ``_simple_mnist``)."""
    try:
        module = importlib.import_module("digitlab.preprocess")
    except ModuleNotFoundError as exc:
        if exc.name != "digitlab.preprocess":
            raise
        return None
    return getattr(module, "preprocess", None)


def _simple_mnist(path: Path) -> np.ndarray:
    """Grey, ink light on dark, cropped, longest side 20 px, centred by mass in 28 x 28 (MNIST's recipe)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if "A" in im.getbands() or "transparency" in im.info:  # transparent background -> white paper
            im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
        grey = np.asarray(im.convert("L"), dtype=np.float32)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:
        grey, border = 255 - grey, 255 - border
    grey = np.clip(grey - np.median(border), 0, None)
    if grey.max() <= 0:
        raise ValueError("the image is blank")
    grey *= 255 / grey.max()
    rows, cols = np.nonzero(grey > 32)
    grey = grey[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = 20 / max(grey.shape)
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    small = np.asarray(Image.fromarray(grey.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS), np.float32)
    mass = small.sum() or 1.0
    cy = (small.sum(1) * np.arange(small.shape[0])).sum() / mass
    cx = (small.sum(0) * np.arange(small.shape[1])).sum() / mass
    top = int(np.clip(round(13.5 - cy), 0, 28 - small.shape[0]))
    left = int(np.clip(round(13.5 - cx), 0, 28 - small.shape[1]))
    out = np.zeros((28, 28), np.uint8)
    out[top:top + small.shape[0], left:left + small.shape[1]] = np.clip(small, 0, 255).astype(np.uint8)
    return out


def _image_to_mnist(path: Path) -> np.ndarray:
    from PIL import Image

    preprocess = _preprocess_hook()
    try:
        array = preprocess(path, target="mnist") if preprocess is not None else _simple_mnist(path)
        array = np.asarray(array)
        if array.shape != (28, 28):
            raise ValueError(f"it became {array.shape} instead of 28 x 28")
    except (DigitlabError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"Image {path} cannot be used ({exc}): fix or remove the file.") from exc
    return array.astype(np.uint8)


def _class_dirs(root: Path) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DatasetError(f"Folder {root} has no class sub-folders: put the images of each class in "
                           "their own sub-folder (for example 0/, 1/, ...).")
    return names


def _read_classes(root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for index, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        images += [_image_to_mnist(p) for p in files]
        labels += [index] * len(files)
    if not images:
        raise DatasetError(f"Folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in its "
                           "class sub-folders: add some.")
    return np.stack(images).astype(np.uint8), np.asarray(labels, np.int64)


def _load_folder(root: Path) -> Dataset:
    if not root.is_dir():
        raise DatasetError(f"Folder {root} does not exist: give folder:PATH with one sub-folder per class.")
    name = f"folder:{root}"
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = _class_dirs(root / "train")
        extra = sorted(set(_class_dirs(root / "test")) - set(classes))
        if extra:
            raise DatasetError(f"{root / 'test'} has classes missing from {root / 'train'} ({', '.join(extra)}): "
                               "give both the same class sub-folders.")
        train_x, train_y = _read_classes(root / "train", classes)
        test_x, test_y = _read_classes(root / "test", classes)
        return Dataset(name, train_x, train_y, test_x, test_y, classes, 255)
    classes = _class_dirs(root)
    images, labels = _read_classes(root, classes)
    if len(labels) < 2:
        raise DatasetError(f"Folder {root} holds a single image: a train/test split needs at least two.")
    train, test = _stratified_split(labels, 0.2, 42)
    return Dataset(name, images[train], labels[train], images[test], labels[test], classes, 255)


def _load_openml(name: str) -> Dataset:
    from sklearn import datasets as skdatasets

    home = cache_dir() / "openml"
    try:
        bunch = skdatasets.fetch_openml(name, as_frame=False, data_home=str(home))
    except Exception as exc:  # offline, unknown name, server error: all end the same way for the user
        raise DatasetError(f"OpenML dataset '{name}' could not be loaded ({type(exc).__name__}: {exc}); the "
                           f"first load needs internet access, after which it is cached in {home}.") from exc
    data = bunch.data.toarray() if hasattr(bunch.data, "toarray") else np.asarray(bunch.data, np.float64)
    side = int(round(np.sqrt(data.shape[1])))
    if side * side != data.shape[1]:
        raise DatasetError(f"OpenML dataset '{name}' has {data.shape[1]} features, not a square image: "
                           "pick an image dataset such as mnist_784.")
    if data.max() <= 1.0:
        data = data * 255
    if data.min() < 0 or data.max() > 255:
        raise DatasetError(f"OpenML dataset '{name}' has pixel values outside 0..255: it is not an image dataset.")
    integer_16 = data.max() <= 16 and np.all(data == np.round(data))
    images = np.round(data).astype(np.uint8).reshape(-1, side, side)
    raw = np.asarray(bunch.target).astype(str)
    names = sorted(set(raw.tolist()))
    try:  # numeric class names in numeric order: "10" after "9"
        names.sort(key=float)
    except ValueError:
        pass
    index = {n: i for i, n in enumerate(names)}
    labels = np.fromiter((index[v] for v in raw.tolist()), np.int64, len(raw))
    if len(labels) == 70_000:  # mnist_784 and Fashion-MNIST on OpenML: official train then test
        train, test = np.arange(60_000), np.arange(60_000, 70_000)
    else:
        train, test = _stratified_split(labels, 0.2, 42)
    return Dataset(f"openml:{name}", images[train], labels[train], images[test], labels[test],
                   names, 16 if integer_16 else 255)


# --- splits ---------------------------------------------------------------------------------------

SCHEMES = ("default", "notebook-000", "notebook-001", "notebook-003", "none")
_SCHEME_ALIASES = {"stratified": "default", "official": "default", "no-val": "none", "full": "none",
                   "000": "notebook-000", "001": "notebook-001", "003": "notebook-003"}


@dataclass(repr=False, eq=False)
class Splits:
    """Train / validation / test arrays (uint8 images, int64 labels) of one split scheme."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    max_value: int = 255
    scheme: str = "default"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, *self.train_x.shape[1:3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"Splits({self.scheme!r}, train={len(self.train_y)}, val={len(self.val_y)}, "
                f"test={len(self.test_y)})")


def _scheme_name(scheme: str) -> str:
    key = re.sub(r"[\s_]+", "-", scheme.strip().lower())
    key = re.sub(r"^(?:notebook|nb)-?(\d{3})$", r"notebook-\1", key)
    key = _SCHEME_ALIASES.get(key, key)
    if key not in SCHEMES:
        raise ConfigError(f"Unknown split scheme '{scheme}': use one of {', '.join(SCHEMES)}.")
    return key


def split(ds: Dataset, scheme: str = "default", val_size: int = 5000, seed: int = 42) -> Splits:
    """Split a dataset into train / val / test with one of ``SCHEMES`` (see the module docstring)."""
    scheme = _scheme_name(scheme)
    x, y, test_x, test_y = ds.train_images, ds.train_labels, ds.test_images, ds.test_labels
    n = len(y)
    if scheme == "notebook-000":
        # The notebook's two calls on OpenML's order (official train then test), reproduced on indices.
        pool_x, pool_y = np.concatenate([x, test_x]), np.concatenate([y, test_y])
        if len(pool_y) <= 10_000:
            raise ConfigError(f"Split scheme notebook-000 takes 5,000 test and 5,000 validation images but "
                              f"{ds.name} has only {len(pool_y)}: use the default scheme.")
        from sklearn.model_selection import train_test_split

        rest, test = train_test_split(np.arange(len(pool_y)), test_size=5_000, stratify=pool_y, random_state=seed)
        train, val = train_test_split(rest, test_size=5_000, stratify=pool_y[rest], random_state=seed)
        x, y, test_x, test_y = pool_x, pool_y, pool_x[test], pool_y[test]
    elif scheme == "notebook-003":
        if n <= 5_000:
            raise ConfigError(f"Split scheme notebook-003 takes the first 5,000 training images for validation "
                              f"but {ds.name} has only {n}: use the default scheme.")
        train, val = np.arange(5_000, n), np.arange(5_000)
    elif scheme == "notebook-001":
        cut = round(0.7 * n)
        train, val = np.arange(cut), np.arange(cut, n)
    elif scheme == "none" or val_size <= 0:
        train, val = np.arange(n), np.arange(0)
    else:
        size = min(int(val_size), n // 10)
        train, val = _stratified_split(y, size, seed) if size > 0 else (np.arange(n), np.arange(0))
    return Splits(x[train], y[train], x[val], y[val], np.ascontiguousarray(test_x), np.ascontiguousarray(test_y),
                  list(ds.classes), ds.max_value, scheme)


# --- scalers --------------------------------------------------------------------------------------

SCALERS = {
    "unit": "x / max_value, to [0, 1]",
    "symmetric": "min-max to [-1, 1] with the training set's min and max (notebook 002)",
    "standard": "per-pixel mean and std of the training set, std 0 -> 1 (StandardScaler, notebook 004)",
    "mean-std": "(x / max_value - mean) / std with one global mean and std (fitted, or given)",
}
_SCALER_PARAMS = {"unit": (), "symmetric": ("min", "max"), "standard": ("mean", "std"), "mean-std": ("mean", "std")}
_SCALER_ALIASES = {"minmax": "symmetric", "min-max": "symmetric", "zscore": "standard", "standardize": "standard",
                   "meanstd": "mean-std", "normalize": "mean-std", "none": "unit", "divide": "unit"}
_CHUNK = 8192


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _pixel_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and population variance in float64, over chunks so memory stays flat: exact integer
    sums for 8-bit images, two float64 passes for anything else."""
    if len(x) == 0:
        raise ConfigError("Cannot fit a scaler on an empty training set: give it the training images.")
    if x.dtype.kind in "ui" and x.dtype.itemsize == 1 and len(x) < 2**22:
        # 8-bit pixels (every image dataset here): exact integer sums in one pass, ~3x quicker than the
        # float64 passes below (the scaler fit was 1.2 s of the 20 s 'digitlab train'). n * sum(x^2) stays
        # under 2^63 for up to 2^22 images, so only the final divisions round.
        n = len(x)
        total_i = np.zeros(x.shape[1:], np.int64)
        squares_i = np.zeros(x.shape[1:], np.int64)
        for i in range(0, n, _CHUNK):
            chunk = x[i:i + _CHUNK].astype(np.int32)  # a square of 8 bits fits in 32
            total_i += chunk.sum(0, dtype=np.int64)
            squares_i += (chunk * chunk).sum(0, dtype=np.int64)
        return total_i / n, (n * squares_i - total_i * total_i) / (float(n) * n)
    total = np.zeros(x.shape[1:])
    for i in range(0, len(x), _CHUNK):
        total += x[i:i + _CHUNK].sum(0, dtype=np.float64)
    mean = total / len(x)
    squares = np.zeros(x.shape[1:])
    for i in range(0, len(x), _CHUNK):
        squares += ((x[i:i + _CHUNK].astype(np.float64) - mean) ** 2).sum(0)
    return mean, squares / len(x)


class Scaler:
    """Maps images to float32 tensors as ``x * a + b``; statistics come from the training split only."""

    def __init__(self, name: str, max_value: float = 255, **params: Any) -> None:
        key = name.strip().lower().replace("_", "-")
        self.name = _SCALER_ALIASES.get(key, key)
        if self.name not in SCALERS:
            raise ConfigError(f"Unknown scaler '{name}': use one of {', '.join(SCALERS)}.")
        allowed = _SCALER_PARAMS[self.name]
        if unknown := sorted(set(params) - set(allowed)):
            raise ConfigError(f"Scaler '{self.name}' takes no option {', '.join(unknown)}: "
                              f"its options are {', '.join(allowed) or 'none'}.")
        given = {k: np.asarray(v, np.float64) for k, v in params.items() if v is not None}
        if given and len(given) != len(allowed):
            raise ConfigError(f"Scaler '{self.name}' needs both {' and '.join(allowed)} or neither "
                              "(then it is fitted on the training images).")
        if self.name == "mean-std" and given and float(given["std"]) <= 0:
            raise ConfigError("Scaler 'mean-std' needs a positive std.")
        self.max_value = float(max_value)
        self.stats: dict[str, np.ndarray] = given
        self.fixed = bool(given)  # given statistics are kept by fit()
        self._device_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def fitted(self) -> bool:
        return self.name == "unit" or bool(self.stats)

    def fit(self, x: Any) -> Scaler:
        """Fit on the training images (uint8 or float, numpy or torch, ``(N, H, W)``)."""
        if self.name == "unit" or self.fixed:
            return self
        array = _as_numpy(x)
        if self.name == "symmetric":
            self.stats = {"min": np.asarray(float(array.min())), "max": np.asarray(float(array.max()))}
        else:
            mean, var = _pixel_moments(array)
            if self.name == "standard":
                std = np.sqrt(var)
                self.stats = {"mean": mean, "std": np.where(std < 10 * np.finfo(np.float64).eps, 1.0, std)}
            else:  # one global mean/std: the mean of the pixel variances plus the variance of the pixel means
                overall = mean.mean()
                std = np.sqrt((var + (mean - overall) ** 2).mean()) / self.max_value
                self.stats = {"mean": np.asarray(overall / self.max_value), "std": np.asarray(std or 1.0)}
        self._device_cache.clear()
        return self

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)`` with ``transform(x) == x * a + b`` on the raw pixel values."""
        return self._affine()

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.fitted:
            raise ConfigError(f"The '{self.name}' scaler is not fitted: call .fit(train_x) on the training images "
                              "first.")
        s = self.stats
        if self.name == "unit":
            return np.asarray(1 / self.max_value), np.asarray(0.0)
        if self.name == "symmetric":
            span = float(s["max"] - s["min"]) or 1.0
            return np.asarray(2 / span), np.asarray(-2 * s["min"] / span - 1)
        if self.name == "standard":
            return 1 / s["std"], -s["mean"] / s["std"]
        return 1 / (self.max_value * s["std"]), -s["mean"] / s["std"]

    def transform(self, x: Any) -> torch.Tensor:
        """Scaled float32 tensor of the same shape, on the device of a torch input."""
        if isinstance(x, torch.Tensor):
            tensor = x if x.dtype == torch.float32 else x.to(torch.float32)
        else:
            array = np.asarray(x)
            # a fresh float32 copy: torch.from_numpy needs a writable array and the dtype we compute in
            tensor = torch.from_numpy(array.astype(np.float32) if array.dtype != np.float32
                                      or not array.flags.writeable else array)
        key = str(tensor.device)
        if key not in self._device_cache:
            a, b = self._affine()
            self._device_cache[key] = (torch.as_tensor(a, dtype=torch.float32, device=tensor.device),
                                       torch.as_tensor(b, dtype=torch.float32, device=tensor.device))
        a, b = self._device_cache[key]
        return torch.addcmul(b, tensor, a)

    __call__ = transform

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "max_value": self.max_value, "fixed": self.fixed,
                "stats": {k: v.tolist() for k, v in self.stats.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        scaler = cls(d["name"], d.get("max_value", 255), **d.get("stats", {}))
        scaler.fixed = bool(d.get("fixed", False))
        return scaler

    def __repr__(self) -> str:
        state = "fixed" if self.fixed else "fitted" if self.fitted else "not fitted"
        return f"Scaler({self.name!r}, max_value={self.max_value:g}, {state})"


def make_scaler(name: str, max_value: float = 255, **params: Any) -> Scaler:
    """A scaler by name (``unit``, ``symmetric``, ``standard``, ``mean-std``); see ``SCALERS``."""
    return Scaler(name, max_value, **params)


def one_hot(labels: Any, num_classes: int) -> np.ndarray:
    """``(N,)`` integer labels -> ``(N, num_classes)`` float32 (notebooks 002 and 004)."""
    y = _as_numpy(labels).astype(np.int64).ravel()
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"Labels must lie in 0..{num_classes - 1} for one-hot encoding, found "
                           f"{y.min()}..{y.max()}: check num_classes.")
    return np.eye(num_classes, dtype=np.float32)[y]
