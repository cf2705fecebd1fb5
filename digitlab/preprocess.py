"""Any image -> the model's input, the way MNIST was built.

MNIST's digits were scanned, binarised, size-normalised to fit a 20x20 box keeping the
aspect ratio (anti-aliased, hence the grey edges), then placed in a 28x28 field so that their
centre of mass sits at the centre (measured on the test set: (14.0, 14.0) in row/column
indices, spread +-0.5 from integer shifts). ``preprocess`` repeats that on a real image:

    decode safely (size limits before decoding) -> grey, alpha flattened -> polarity to light
    ink on black -> uneven background divided out, contrast stretched above the noise floor
    -> specks and paper edges dropped -> crop to the ink -> thin strokes thickened -> 20 px box
    -> centre of mass at (14, 14)

Fashion-MNIST ("fashion") squares the object and scales it to fill 28x28; scikit-learn's 8x8
digits ("digits") fill a 32x32 bitmap's height and count ink pixels in 4x4 blocks (0..16).

``fields`` reuses ``to_grey_float``, ``extract_ink`` and ``center_digit``, so a digit cut out
of a field goes through exactly the same normalisation as a single uploaded digit.
"""

from __future__ import annotations

import io
import math
import os
import struct
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage as ndi

from digitlab.errors import ConfigError, ImageError

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000

TARGETS = {
    "mnist": "mnist",
    "fashion": "fashion",
    "fashion-mnist": "fashion",
    "fashion_mnist": "fashion",
    "digits": "digits",
    "digits8": "digits",
    "sklearn-digits": "digits",
}

# Big photos are reduced to this longest side before any float work: the output is 20 px,
# and a digit that is a few per cent of a 1600-px frame still keeps ~50 px.
WORK_SIDE = 1600
# Residual contrast (0..1) below which an image counts as blank: ~25 grey levels.
MIN_CONTRAST = 0.1
# Stroke widths in output pixels. MNIST's median is 2.9 px (2*area/boundary of pixels > 0.5
# on the test set, 10th percentile 2.2); strokes thinner than MIN after scaling are widened
# to TARGET, so a fine pen on a big canvas does not vanish into a 1-px hairline.
MNIST_MIN_STROKE = 2.0
MNIST_TARGET_STROKE = 2.7
# The 32x32 bitmaps behind scikit-learn's 8x8 digits have heavy strokes (a "1" is ~2 blocks
# wide) and every digit fills the full height while the ink spans ~6 of 8 block columns.
# Calibrated on MNIST test digits converted to 8x8 against a logistic regression trained on
# scikit-learn's digits (65% on the converted digits, the best of the settings tried; the
# two sets come from different writers and scanners, so the gap is in the data).
DIGITS_MIN_STROKE = 7.0
DIGITS_TARGET_STROKE = 7.0
DIGITS_MAX_WIDTH = 22

_FORMATS = "PNG, JPEG, GIF, BMP, WebP or TIFF"
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError)
# warnings.catch_warnings swaps process-wide state; serialise our own use of it.
_WARNINGS_LOCK = threading.Lock()


# --- decoding -------------------------------------------------------------------------------


def open_image(source: Any, name: str | None = None) -> Image.Image:
    """Decode ``source`` (path, bytes, file-like, PIL image or numpy array) safely.

    File size and pixel count are checked before any pixel is decoded. The first frame of
    an animation is used and EXIF orientation applied (phone photos). ``name`` labels the
    image in error messages (default: the path, or "the uploaded image").
    """
    if isinstance(source, Image.Image):
        label = name or "The image"
        _check_pixels(source.size, label)
        return _orient(source)
    if isinstance(source, np.ndarray):
        return _array_to_image(source, name or "The image array")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or f"Image file '{path}'"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageError(f"{label} does not exist; check the path.") from None
        except OSError as exc:
            raise ImageError(f"{label} cannot be read ({exc.strerror}); check the path.") from None
        if path.is_dir():
            raise ImageError(f"{label} is a folder, not an image; give the path of an image file.")
        _check_bytes(size, label)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{label} cannot be read ({exc.strerror}); check its permissions.") from None
        return _decode(data, label)
    label = name or "The uploaded image"
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        label = name or _file_label(source) or label
        data = source.read(MAX_FILE_BYTES + 1)
        if not isinstance(data, bytes):
            raise ImageError(f"{label} was opened as text; open it in binary mode ('rb').")
    else:
        raise TypeError(f"cannot read an image from {type(source).__name__}")
    _check_bytes(len(data), label)
    return _decode(data, label)


def _file_label(fileobj: Any) -> str | None:
    fname = getattr(fileobj, "name", None)
    return f"Image file '{fname}'" if isinstance(fname, str) else None


def _check_bytes(size: int, label: str) -> None:
    if size > MAX_FILE_BYTES:
        raise ImageError(
            f"{label} is over the {MAX_FILE_BYTES // 2**20} MB limit; scale it down or compress it first."
        )
    if size == 0:
        raise ImageError(f"{label} is empty (0 bytes); choose a {_FORMATS} image.")


def _check_pixels(size: tuple[int, int], label: str) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"{label} is {w}x{h} pixels, over the {MAX_PIXELS // 1_000_000}-megapixel limit; "
            "scale it down first."
        )
    if w == 0 or h == 0:
        raise ImageError(f"{label} has no pixels ({w}x{h}); choose another image.")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header without decoding it; None if unreadable."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.size
        except Exception:  # noqa: BLE001 - any header Pillow cannot parse: the caller decides
            return None


def open_header(data: bytes, name: str | None = None) -> Image.Image:
    """An encoded picture with only its header parsed (format, size), its pixels not yet decoded.

    The same refusals as ``open_image`` for what the header shows (not an image, SVG, damaged, over
    the pixel limit); ``load_pixels`` decodes it. The server reads the size from it to decide where
    to preprocess, and then decodes the same object instead of parsing the header a second time.
    """
    label = name or "The uploaded image"
    # Image.open only parses the header, so the pixel limit is checked before load() decodes.
    # Pillow's own bomb warning is turned into our error; the lock only covers header parsing
    # (catch_warnings swaps process-wide state), so decoding in several threads stays parallel.
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(_bomb(label)) from None
        except UnidentifiedImageError:
            head = data[:1024].lstrip().lower()
            if b"<svg" in head or (head.startswith(b"<?xml") and b"svg" in data[:4096].lower()):
                raise ImageError(
                    f"{label} is an SVG vector drawing, which cannot be read; export it as PNG first."
                ) from None
            raise ImageError(f"{label} is not a readable image; use a {_FORMATS} file.") from None
        except _DECODE_ERRORS as exc:
            raise ImageError(f"{label} is damaged ({exc}); save or upload the image again.") from None
    _check_pixels(img.size, label)
    return img


def load_pixels(img: Image.Image, name: str | None = None) -> Image.Image:
    """Decode the first frame of a picture from ``open_header`` (animations are never decoded further)."""
    label = name or "The uploaded image"
    try:
        img.load()
    except Image.DecompressionBombError:
        raise ImageError(_bomb(label)) from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{label} is truncated or damaged ({exc}); save or upload the image again.") from None
    return img


def _bomb(label: str) -> str:
    return f"{label} has more than {MAX_PIXELS // 1_000_000} megapixels; scale it down first."


def _decode(data: bytes, label: str) -> Image.Image:
    return _orient(load_pixels(open_header(data, label), label))


def _orient(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except _DECODE_ERRORS:  # a broken EXIF block should not cost the picture
        return img


def _array_to_image(arr: np.ndarray, label: str) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(f"{label} has shape {a.shape}; give H x W, H x W x 3 or H x W x 4.")
    _check_pixels((a.shape[1], a.shape[0]), label)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError(f"{label} contains NaN or infinite values; clean it first.")
        if a.ndim == 3:  # colour floats: 0..1 or 0..255 to 8 bits
            scale = 255.0 if a.max() <= 1.0 else 1.0
            a = np.clip(a * scale, 0, 255).round().astype(np.uint8)
        else:
            a = a.astype(np.float32)
    elif a.dtype != np.uint8:
        if a.ndim == 3:
            a = np.clip(a, 0, 255).astype(np.uint8)
        elif a.dtype == np.uint16:
            pass
        else:
            a = np.clip(a, -(2**31), 2**31 - 1).astype(np.int32)
    return Image.fromarray(np.ascontiguousarray(a))


# --- grey, polarity, background -----------------------------------------------------------


def to_grey_float(img: Image.Image, frame_is_paper: bool = False) -> np.ndarray:
    """Grey float32 H x W in [0, 1] with the ink light on a dark background.

    Alpha is flattened onto white (onto black when the painted pixels are themselves light,
    so white strokes on a transparent canvas survive). Polarity compares each pixel with a
    large-scale local median of the image (the paper), so shading, vignetting and a few dark
    border pixels do not flip it: the side with more contrast mass is the ink. With
    ``frame_is_paper`` (product photos, where the object may cover most of the picture) the
    frame of the picture is the backdrop and the object is whatever differs from it.
    """
    grey, alpha = _grey_and_alpha(img)
    if alpha is not None and alpha.min() < 1.0:
        painted = alpha > 0.5
        light_paint = painted.any() and float(np.average(grey, weights=alpha)) > 0.5
        paper = 0.0 if light_paint else 1.0
        grey = alpha * grey + (1.0 - alpha) * paper
    dark = float(np.median(_frame(grey))) > float(grey.mean()) if frame_is_paper else _ink_is_dark(grey)
    if dark:
        grey = 1.0 - grey
    return np.clip(grey, 0.0, 1.0).astype(np.float32)


def _grey_and_alpha(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    mode = img.mode
    if mode == "1":
        img, mode = img.convert("L"), "L"
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        mode = "RGBA" if has_alpha else "RGB"
        img = img.convert(mode)
    elif mode in ("La", "RGBa"):
        mode = "RGBA"
        img = img.convert(mode)
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img if mode in ("I", "F") or mode.startswith("I;16") else img.convert("I"))
        return _scale_deep(a.astype(np.float64)).astype(np.float32), None
    if mode == "L":
        return np.asarray(img, dtype=np.float32) / 255.0, None
    if mode == "LA":
        a = np.asarray(img, dtype=np.float32) / 255.0
        return a[:, :, 0], a[:, :, 1]
    if mode != "RGBA":
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...
    a = np.asarray(img, dtype=np.float32) / 255.0
    grey = a[:, :, 0] * 0.299 + a[:, :, 1] * 0.587 + a[:, :, 2] * 0.114  # ITU-R 601, as Pillow's "L"
    return grey, (a[:, :, 3] if a.shape[2] == 4 else None)


def _scale_deep(a: np.ndarray) -> np.ndarray:
    """16/32-bit and float pixels to 0..1, guessing the bit depth from the largest value."""
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0:
        for full in (1.0, 255.0, 4095.0, 65535.0):
            if hi <= full:
                return a / full
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Float image to (height, width): area average when shrinking (MNIST's anti-aliasing)."""
    if a.shape == (height, width):
        return a.astype(np.float32)
    shrinking = width <= a.shape[1] and height <= a.shape[0]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    out = Image.fromarray(a.astype(np.float32)).resize((width, height), resample)
    return np.asarray(out, dtype=np.float32)


def _thumbnail(a: np.ndarray, side: int) -> np.ndarray:
    h, w = a.shape
    f = min(1.0, side / max(h, w))
    return _resize(a, max(1, round(w * f)), max(1, round(h * f)))


# --- order statistics and small filters --------------------------------------------------------
# A 28x28 upload went through ~25 calls of np.median, np.percentile, np.histogram and scipy.ndimage
# filters, each costing 5 to 30 us of argument handling for microseconds of work: most of the ~1 ms
# preprocessing took. The helpers below return the same values, bit for bit, with a fraction of the
# calls: the same partition and the same arithmetic on the same dtypes as numpy's median and linear
# percentile, scipy's own 1-D passes, and exact selections (minimum, maximum, or, and) for the rest.
# tests/test_preprocess_exact.py checks each against the library call it replaces.


def _stats(x: np.ndarray, *qs: Any, listed: bool = False) -> list[Any]:
    """``np.median(x)`` for each None in ``qs`` and ``np.percentile(x, q)`` for each number, from one
    ``np.partition``. ``listed``: the percentiles as ``np.percentile(x, [q, ...])`` gives them (float64).

    Arrays that are not float, empty or holding a NaN are handed to numpy itself.
    """
    flat = x.ravel()
    n = flat.size
    if n == 0 or flat.dtype.kind != "f":
        return _numpy_stats(x, qs, listed)
    plan: list[tuple[int, int, Any]] = []
    kth = {n - 1}  # the last place holds the maximum, or a NaN
    for q in qs:
        if q is None:
            h = n // 2
            plan.append((h, h, None) if n % 2 else (h - 1, h, None))
            kth.update((h - 1, h) if n % 2 == 0 else (h,))
            continue
        v = (n - 1) * (q / 100)  # numpy's virtual index for the linear method
        if v >= n - 1:
            i = j = n - 1
            t = v + 1.0  # numpy's gamma against its index -1 (no effect: both ends are the maximum)
        else:
            i = math.floor(v)
            j, t = i + 1, v - i
        weak = type(q) in (int, float) and not listed
        plan.append((i, j, t if weak else np.float64(t)))
        kth.update((i, j))
    part = np.partition(flat, sorted(kth))
    if np.isnan(part[n - 1]):
        return _numpy_stats(x, qs, listed)
    out: list[Any] = []
    for i, j, t in plan:
        a, b = part[i], part[j]
        if t is None:  # median: np.mean of the middle one or two
            out.append(a if i == j else (a + b).dtype.type((a + b) / np.intp(2)))
        else:  # numpy's _lerp, which takes the upper end's form from gamma 0.5 on
            diff = b - a
            out.append(b - diff * (1 - t) if t >= 0.5 else a + diff * t)
    return out


def _numpy_stats(x: np.ndarray, qs: tuple[Any, ...], listed: bool) -> list[Any]:
    pct = [q for q in qs if q is not None]
    listed_values = iter(np.percentile(x, pct)) if listed and pct else None
    out = []
    for q in qs:
        if q is None:
            out.append(np.median(x))
        else:
            out.append(next(listed_values) if listed_values is not None else np.percentile(x, q))
    return out


def _median(x: np.ndarray) -> Any:
    return _stats(x, None)[0]


def _robust_sigma(x: np.ndarray, centre: Any = None) -> float:
    """1.4826 times the median absolute deviation; ``centre``: ``np.median(x)`` when already known."""
    if centre is None:
        centre = _median(x)
    return 1.4826 * float(_median(np.abs(x - centre)))


def _grey_opening(a: np.ndarray, k: int) -> np.ndarray:
    """``ndi.grey_opening(a, size=k)``: scipy's four 1-D passes without its argument handling."""
    low = ndi.minimum_filter1d(ndi.minimum_filter1d(a, k, axis=0), k, axis=1)
    if not low.any():  # the dilation of zeros is zeros (a clean drawing: no stroke is k px wide)
        return low
    origin = 0 if k % 2 else -1  # grey_dilation mirrors the window, which moves an even one by a pixel
    return ndi.maximum_filter1d(ndi.maximum_filter1d(low, k, axis=0, origin=origin), k, axis=1, origin=origin)


def _flat3(a: np.ndarray) -> np.ndarray:
    """Where the 3x3 window (edge pixels repeated, scipy's "nearest") holds one value:
    ``ndi.maximum_filter(a, size=3, mode="nearest") == ndi.minimum_filter(a, size=3, mode="nearest")``."""
    h, w = a.shape
    p = np.empty((h + 2, w + 2), a.dtype)
    p[1:-1, 1:-1] = a
    p[0, 1:-1], p[-1, 1:-1] = a[0], a[-1]
    p[:, 0], p[:, -1] = p[:, 1], p[:, -2]
    extremes = []
    for fn in (np.maximum, np.minimum):  # separable: along rows, then along columns
        r = fn(fn(p[:, :-2], p[:, 1:-1]), p[:, 2:])
        extremes.append(fn(fn(r[:-2], r[1:-1]), r[2:]))
    return extremes[0] == extremes[1]


def _dilate4(m: np.ndarray, iterations: int) -> np.ndarray:
    """``ndi.binary_dilation(m, iterations=...)``: the 4-neighbour cross, nothing outside the image."""
    for _ in range(iterations):
        d = m.copy()
        d[1:] |= m[:-1]
        d[:-1] |= m[1:]
        d[:, 1:] |= m[:, :-1]
        d[:, :-1] |= m[:, 1:]
        m = d
    return m


def _erode4(m: np.ndarray) -> np.ndarray:
    """``ndi.binary_erosion(m, border_value=0)``: the 4-neighbour cross, outside the image counts as empty."""
    e = m.copy()
    e[1:] &= m[:-1]
    e[:-1] &= m[1:]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    e[0] = e[-1] = False
    e[:, 0] = e[:, -1] = False
    return e


def _center_of_mass(img: np.ndarray) -> tuple[Any, Any]:
    """``ndi.center_of_mass(img)`` for a 2-D array: the same products and sums."""
    h, w = img.shape
    total = img.sum()
    cy = (img * np.arange(h).reshape(h, 1).astype(float)).sum() / total
    cx = (img * np.arange(w).reshape(1, w).astype(float)).sum() / total
    return cy, cx


def _paper_median(grey: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Large-scale local median (the paper under shading), at ``shape``: cheap on a 32-px thumbnail."""
    small = _thumbnail(grey, 32)
    k = max(3, min(small.shape) // 2)
    return _resize(_median_filter(small, k), shape[1], shape[0])


def _median_filter(a: np.ndarray, k: int) -> np.ndarray:
    """``ndi.median_filter(a, size=k, mode="nearest")``, value for value, at about half its cost."""
    if k == 3:
        return _median3(a)
    p = np.pad(a, ((k // 2, k - 1 - k // 2),) * 2, mode="edge")  # scipy's window placement
    windows = np.lib.stride_tricks.sliding_window_view(p, (k, k)).reshape(*a.shape, k * k)
    mid = (k * k) // 2  # scipy's rank for an even count too (the upper of the two middle values)
    return np.partition(windows, mid, axis=-1)[..., mid]


# Paeth's median-of-9 sorting network: 19 compare-exchanges of whole shifted images.
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
            (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def _median3(a: np.ndarray) -> np.ndarray:
    """3x3 median with edge pixels repeated: the same values as scipy's, several times faster."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    v = [p[i : i + h, j : j + w] for i in range(3) for j in range(3)]
    for i, j in _MEDIAN9:
        v[i], v[j] = np.minimum(v[i], v[j]), np.maximum(v[i], v[j])
    return v[4]


def _frame(grey: np.ndarray) -> np.ndarray:
    """The pixels of the outer 3% band of the picture (at least one pixel wide)."""
    b = max(1, round(0.03 * min(grey.shape)))
    inner = np.ones(grey.shape, bool)
    inner[b:-b or None, b:-b or None] = False
    return grey[inner]


def _ink_is_dark(grey: np.ndarray) -> bool:
    """True when the ink is darker than the paper.

    The paper level is the frame of the picture when that frame is nearly uniform (a digit
    rarely covers its frame, while a bold digit may cover most of the picture), else a
    large-scale local median (shading, vignetting, a dark edge of the desk in a photo). The side
    with more contrast mass beyond the noise is the ink.
    """
    q1, q3, middle = _stats(_frame(grey), 25, 75, None, listed=True)
    if q3 - q1 < 0.1:
        paper: np.ndarray | float = float(middle)
    else:
        paper = _paper_median(grey, grey.shape)
    d = grey - paper
    t = max(0.02, 3.0 * _robust_sigma(d))
    dark = float(np.maximum(-d - t, 0).sum())  # np.clip(x, 0, None) is np.maximum(x, 0)
    light = float(np.maximum(d - t, 0).sum())
    if dark == light:  # nothing stands out: a blank page is light paper
        return float(_median(grey)) > 0.5
    return dark > light


_EDGES256 = np.linspace(0.0, 1.0, 257)


def _histogram256(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.histogram(values, bins=256, range=(0.0, 1.0))``; float values already in [0, 1] are binned
    directly: the edges are exact multiples of 1/256, so the bin is floor(256 v), 1.0 in the last."""
    v = values.ravel()
    if v.dtype.kind == "f" and v.size and 0.0 <= v.min() and v.max() <= 1.0:
        bins = (v * 256.0).astype(np.intp)
        np.minimum(bins, 255, out=bins)
        return np.bincount(bins, minlength=256), _EDGES256
    return np.histogram(values, bins=256, range=(0.0, 1.0))


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold for values in [0, 1] (256-bin histogram)."""
    hist, edges = _histogram256(values)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _noise_sigma(a: np.ndarray) -> float:
    """Pixel noise: robust spread of what a 3x3 median removes (strokes are smooth at that scale)."""
    step = max(1, math.ceil(max(a.shape) / 512))  # a sample is plenty and keeps big images cheap
    sample = a[::step, ::step]
    # Where the 3x3 neighbourhood is flat the median removes nothing; when that holds for more than
    # half the pixels the robust spread is exactly 0, found with two cheap separable filters.
    flat = _flat3(sample)
    if 2 * int(flat.sum()) > sample.size:
        return 0.0
    return _robust_sigma(sample - _median3(sample))


def _paper_level(bg: np.ndarray, k: int, w: int, h: int) -> np.ndarray | float:
    """The background smoothed, as one level for even paper (clean inputs stay exact), else at w x h."""
    if not bg.any():
        return 0.0  # what the lines below give for an all-zero background (ink on clean paper)
    bg = ndi.uniform_filter(bg, size=k, mode="nearest")
    high, low, middle = _stats(bg, 99, 1, None)
    if high - low < 0.03:
        return float(middle)
    return _resize(bg, w, h)


def extract_ink(grey: np.ndarray, stretch_percentile: float = 80.0) -> tuple[np.ndarray, np.ndarray]:
    """Light-on-dark grey -> (ink in [0, 1] with a clean zero background, Otsu ink mask).

    The background (paper and its lighting) is a grey opening of a thumbnail with a window
    wider than any stroke, capped by a large-scale median and smoothed; the ink is divided by
    the local paper level (shading is multiplicative), then stretched so the noise floor
    maps to 0 and the ``stretch_percentile`` of ink pixels to 1. The mask is empty when
    nothing stands out from the paper (a blank image).
    """
    h, w = grey.shape
    small = _thumbnail(grey, 128)
    k = max(3, min(small.shape) // 4)
    bg = _grey_opening(small, k)
    # The large-scale median only caps the opening, and it is never below the darkest pixel of its
    # 32-px thumbnail: when the opening is already at or under that level (clean paper, the usual
    # drawing or scan) the cap changes nothing, so the costly median filter is skipped.
    lowest = float(_thumbnail(grey, 32).min())
    if float(bg.max()) > (lowest - 1e-6 if lowest > 0 else 0.0):
        bg = np.minimum(bg, _paper_median(grey, small.shape))
    bg_full = _paper_level(bg, k, w, h)
    raw = (grey - bg_full) / np.maximum(1.0 - bg_full, 0.05)
    resid = np.clip(raw, 0.0, 1.0)

    t = otsu_threshold(resid)
    mask = resid > t
    if not mask.any():
        return np.zeros_like(resid), mask
    ink_vals, paper_vals = resid[mask], resid[~mask]
    floor = 0.0
    if paper_vals.size:
        middle = _median(paper_vals)
        floor = min(float(middle) + 3.0 * _robust_sigma(paper_vals, middle), 0.8 * t)
    top = float(_stats(ink_vals, stretch_percentile)[0])
    paper_mean = float(paper_vals.mean()) if paper_vals.size else 0.0
    # Otsu splits pure noise too (its halves differ by ~1.6 sigma): ink must clear the noise.
    # The noise is only measured when the contrast alone does not already settle the question.
    contrast = float(ink_vals.mean()) - paper_mean
    if top - floor < MIN_CONTRAST or contrast < MIN_CONTRAST or contrast < 4.0 * _noise_sigma(raw):
        return np.zeros_like(resid), np.zeros_like(mask)
    ink = np.clip((resid - floor) / (top - floor), 0.0, 1.0).astype(np.float32)
    return ink, mask


def _object_ink(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A product on an even backdrop (Fashion-MNIST's photos): subtract the frame's level.

    ``extract_ink``'s local background would eat the inside of a large solid garment, so the
    backdrop is one level here; the object keeps its own shading, scaled so its 99th percentile
    is white.
    """
    paper = float(np.median(_frame(grey)))
    raw = (grey - paper) / max(1.0 - paper, 0.05)
    floor = max(0.02, 4.0 * _noise_sigma(raw))
    mask = raw > floor
    if not mask.any():
        return np.zeros_like(grey), mask
    top = float(np.percentile(raw[mask], 99.0))
    if top - floor < MIN_CONTRAST:
        return np.zeros_like(grey), np.zeros_like(mask)
    return np.clip((raw - floor) / (top - floor), 0.0, 1.0).astype(np.float32), mask


_EIGHT = np.ones((3, 3))


def _main_ink(ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep the object: drop specks and paper edges that run along an image side."""
    labels, n = ndi.label(mask, structure=_EIGHT)
    if n == 0:
        return np.zeros_like(ink)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    boxes = ndi.find_objects(labels)
    h, w = mask.shape
    keep = areas >= max(2.0, 0.02 * areas.sum())
    for i, (sy, sx) in enumerate(boxes):
        touches = sy.start == 0 or sx.start == 0 or sy.stop == h or sx.stop == w
        spans = (sx.stop - sx.start) >= 0.95 * w or (sy.stop - sy.start) >= 0.95 * h
        if touches and spans and keep.sum() > 1:
            keep[i] = False
    # A real mark has some extent; lone pixels of salt noise do not.
    extents = np.array([max(sy.stop - sy.start, sx.stop - sx.start) for sy, sx in boxes])
    keep &= extents >= max(3, 0.01 * max(h, w))
    if not keep.any():
        return np.zeros_like(ink)
    kept = np.concatenate(([False], keep))[labels]  # the kept labels' pixels
    # Grow the mask by a little so the anti-aliased edges next to the strokes stay.
    kept = _dilate4(kept, 2)
    return np.where(kept, ink, 0.0).astype(np.float32)


# --- size normalisation ---------------------------------------------------------------------


def _bbox(a: np.ndarray) -> tuple[slice, slice] | None:
    rows, cols = np.nonzero(a.any(axis=1))[0], np.nonzero(a.any(axis=0))[0]
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def stroke_width(ink: np.ndarray) -> float:
    """Mean stroke width in pixels: 2 * area / boundary of the pixels above 0.5."""
    m = ink > 0.5
    area = int(m.sum())
    if area == 0:
        return 0.0
    boundary = int((m & ~_erode4(m)).sum())
    return 2.0 * area / max(boundary, 1)


def _thicken(crop: np.ndarray, box: float, min_px: float, target_px: float) -> np.ndarray:
    """Widen strokes that would be thinner than ``min_px`` once the crop is scaled to ``box``.

    Dilating by r grows the crop by 2r too, so r solves (sw + 2r) * box / (L + 2r) = target.
    The widened stroke is drawn anti-aliased from the distance to the ink.
    """
    sw, length = stroke_width(crop), max(crop.shape)
    if sw == 0 or sw * box / length >= min_px:
        return crop
    r = (target_px * length - box * sw) / (2.0 * (box - target_px))
    pad = int(math.ceil(r)) + 1
    padded = np.pad(crop, pad)
    dist = ndi.distance_transform_edt(padded <= 0.5)
    grown = np.maximum(padded, np.clip(r + 0.5 - dist, 0.0, 1.0))
    return grown[_bbox(grown > 0)]


def _place_by_mass(img: np.ndarray, size: int, centre: float) -> np.ndarray:
    h, w = img.shape
    cy, cx = _center_of_mass(img)
    oy = min(max(round(centre - cy), 0), size - h)
    ox = min(max(round(centre - cx), 0), size - w)
    out = np.zeros((size, size), np.float32)
    out[oy : oy + h, ox : ox + w] = img
    return out


def _to_uint8(a: np.ndarray) -> np.ndarray:
    top = float(a.max())
    if top > 0:
        a = a / top  # MNIST's strokes reach 255
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


def center_digit(ink: np.ndarray) -> np.ndarray:
    """Ink image (light on black, zero background) -> uint8 28x28 the MNIST way.

    Crop to the ink, widen strokes that would end up too thin, scale the longest side to
    20 px keeping the aspect ratio (area-averaged), centre of mass at (14, 14).
    """
    box = _bbox(ink > 0)
    if box is None:
        raise ImageError("The digit is blank (no ink found); draw or photograph a digit with visible contrast.")
    crop = _thicken(ink[box], 20.0, MNIST_MIN_STROKE, MNIST_TARGET_STROKE)
    h, w = crop.shape
    f = 20.0 / max(h, w)
    small = np.clip(_resize(crop, max(1, round(w * f)), max(1, round(h * f))), 0.0, 1.0)
    return _to_uint8(_place_by_mass(small, 28, 14.0))


def _to_fashion(ink: np.ndarray) -> np.ndarray:
    crop = ink[_bbox(ink > 0)]
    h, w = crop.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)
    y0, x0 = (side - h) // 2, (side - w) // 2
    square[y0 : y0 + h, x0 : x0 + w] = crop
    return _to_uint8(np.clip(_resize(square, 28, 28), 0.0, 1.0))


def _to_digits8(ink: np.ndarray) -> np.ndarray:
    # The 8x8 digits fill the full height of their 32x32 bitmap (every one of the 1,797), are
    # at most ~22 px wide and centred (ink mostly in block columns 1..6); ink pixels were counted.
    crop = _thicken(ink[_bbox(ink > 0)], 32.0, DIGITS_MIN_STROKE, DIGITS_TARGET_STROKE)
    h, w = crop.shape
    f = 32.0 / h
    new_w = min(DIGITS_MAX_WIDTH, max(1, round(w * f)))
    scaled = _resize(crop, new_w, 32)
    bitmap = np.zeros((32, 32), np.float32)
    x0 = (32 - new_w) // 2
    bitmap[:, x0 : x0 + new_w] = scaled
    on = (bitmap >= 0.5).astype(np.uint8)
    return on.reshape(8, 4, 8, 4).sum(axis=(1, 3)).astype(np.uint8)


# --- the public pipeline --------------------------------------------------------------------


def resolve_target(target: str) -> str:
    key = str(target).lower()
    if key not in TARGETS:
        raise ConfigError(f"Unknown preprocessing target '{target}'; choose one of {', '.join(TARGETS)}.")
    return TARGETS[key]


def _reduce_large(img: Image.Image) -> Image.Image:
    factor = math.ceil(max(img.size) / WORK_SIDE)
    if factor <= 1:
        return img
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        img = img.convert("RGB")
    return img.reduce(factor)


def preprocess(source: Any, target: str = "mnist", name: str | None = None) -> np.ndarray:
    """Any image -> model input: uint8 28x28 (mnist, fashion) or uint8 8x8 in 0..16 (digits).

    Raises ``ImageError`` for unreadable, oversized or blank images (never guesses a blank).
    """
    kind = resolve_target(target)
    label = name or ("The image" if isinstance(source, (Image.Image, np.ndarray)) else _label(source))
    grey = load_grey(source, name, frame_is_paper=kind == "fashion")
    ink, mask = _object_ink(grey) if kind == "fashion" else extract_ink(grey)
    ink = _main_ink(ink, mask)
    if not ink.any():
        raise ImageError(
            f"{label} is blank (no ink stands out from the background); "
            "use an image with a clearly visible digit."
        )
    return ink_to_input(ink, kind)


def load_grey(source: Any, name: str | None = None, frame_is_paper: bool = False) -> np.ndarray:
    """Decode safely, shrink very large pictures, and return ``to_grey_float`` (light ink on black)."""
    return to_grey_float(_reduce_large(open_image(source, name)), frame_is_paper=frame_is_paper)


def ink_to_input(ink: np.ndarray, target: str = "mnist") -> np.ndarray:
    """Clean ink (light on a zero background, any size) -> the model input of ``target``."""
    kind = resolve_target(target)
    if kind == "fashion":
        return _to_fashion(ink)
    if kind == "digits":
        return _to_digits8(ink)
    return center_digit(ink)


def _label(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"Image file '{Path(source)}'"
    return _file_label(source) or "The uploaded image"


def preprocess_many(sources: Iterable[Any], target: str = "mnist") -> list[np.ndarray | ImageError]:
    """``preprocess`` each source; a bad image yields its ``ImageError`` instead of stopping the batch."""
    kind = resolve_target(target)
    out: list[np.ndarray | ImageError] = []
    for src in sources:
        try:
            out.append(preprocess(src, kind))
        except ImageError as exc:
            out.append(exc)
    return out
