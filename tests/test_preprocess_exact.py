"""The cheap helpers of ``digitlab.preprocess`` give what the library calls they stand for give, bit for bit.

``preprocess`` replaced np.median, np.percentile, np.histogram and several scipy.ndimage calls (their
argument handling was most of the time a small picture took) by helpers that must not change a single
output value: each helper is checked against its library call on varied arrays, then whole pictures
go through ``preprocess`` with the helpers and with the library calls, and the outputs must be equal.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

import digitlab.preprocess as pp
from digitlab.data import load_dataset
from digitlab.errors import ImageError


def same(a, b) -> bool:
    """Equal value, dtype and bytes (so also the sign of a zero); for NaN, both NaN."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def arrays(seed: int = 0):
    """Float arrays of many sizes: continuous values, heavy ties, mostly zeros, constant, 0..1 grid values."""
    rng = np.random.default_rng(seed)
    sizes = [*range(1, 40), 63, 64, 65, 100, 255, 256, 783, 784, 785, 1000, 4097]
    for n in sizes:
        for dtype in (np.float32, np.float64):
            yield rng.random(n).astype(dtype)
            yield np.round(rng.random(n) * 4).astype(dtype) / 4  # ties
            z = np.zeros(n, dtype)
            z[rng.random(n) < 0.1] = rng.random() * 3 - 1
            yield z
            yield np.full(n, rng.normal(), dtype)
            yield (rng.integers(0, 257, n) / 256).astype(dtype)


@pytest.mark.parametrize("qs", [(None,), (25, 75, None), (99, 1, None), (80.0,), (0, 100), (50, 33.3, 12.5, None)])
def test_stats_are_numpy_median_and_percentile(qs):
    for x in arrays():
        got = pp._stats(x, *qs)
        for q, value in zip(qs, got, strict=True):
            want = np.median(x) if q is None else np.percentile(x, q)
            assert same(value, want), (x.dtype, x.size, q, value, want)
        pct = [q for q in qs if q is not None]
        if pct:
            listed = [v for q, v in zip(qs, pp._stats(x, *qs, listed=True), strict=True) if q is not None]
            assert same(np.array(listed), np.percentile(x, pct)), (x.dtype, x.size, pct)


def test_stats_leave_nan_empty_and_integer_arrays_to_numpy():
    x = np.array([0.5, np.nan, 0.1], np.float32)
    with np.errstate(invalid="ignore"):
        assert all(np.isnan(v) for v in pp._stats(x, None, 80.0))
    ints = np.array([3, 1, 2, 8])
    assert same(pp._stats(ints, None)[0], np.median(ints))
    assert same(pp._stats(ints, 75)[0], np.percentile(ints, 75))
    # A q that is not a Python number (np.float64) keeps numpy's stronger promotion.
    f = np.random.default_rng(3).random(101).astype(np.float32)
    assert same(pp._stats(f, np.float64(80.0))[0], np.percentile(f, np.float64(80.0)))


def images(seed: int = 1):
    rng = np.random.default_rng(seed)
    for h, w in [(1, 1), (1, 7), (7, 1), (2, 2), (3, 5), (28, 28), (31, 17), (64, 90)]:
        a = rng.random((h, w)).astype(np.float32)
        yield a
        yield np.where(a > 0.6, a, 0).astype(np.float32)  # mostly zero, like ink on paper
        yield (np.round(a * 2) / 2).astype(np.float32)  # plateaus
        yield np.zeros((h, w), np.float32)


def test_grey_opening_flat3_and_center_of_mass_are_scipys():
    for a in images():
        for k in (2, 3, 4, 7, 8):
            assert same(pp._grey_opening(a, k), ndi.grey_opening(a, size=k)), (a.shape, k)
        flat = ndi.maximum_filter(a, size=3, mode="nearest") == ndi.minimum_filter(a, size=3, mode="nearest")
        assert same(pp._flat3(a), flat), a.shape
        if a.sum() > 0:
            assert all(same(u, v) for u, v in zip(pp._center_of_mass(a), ndi.center_of_mass(a), strict=True))


def test_binary_erosion_and_dilation_are_scipys():
    rng = np.random.default_rng(2)
    for h, w in [(1, 1), (1, 6), (6, 1), (2, 3), (28, 28), (40, 13)]:
        for p in (0.05, 0.3, 0.7, 1.0):
            m = rng.random((h, w)) < p
            assert same(pp._erode4(m), ndi.binary_erosion(m, border_value=0)), (h, w, p)
            for it in (1, 2):
                assert same(pp._dilate4(m, it), ndi.binary_dilation(m, iterations=it)), (h, w, p, it)


def test_histogram256_is_numpys():
    rng = np.random.default_rng(4)
    edges = np.arange(257) / 256
    cases = [rng.random(1000), edges, np.nextafter(edges, -1)[1:], np.nextafter(edges, 2)[:-1],
             np.array([0.0, 1.0, 1.0]), rng.random(500) * 1.2 - 0.1, np.array([0.5, np.nan])]
    for values in cases:
        for dtype in (np.float32, np.float64):
            v = values.astype(dtype)
            hist, got_edges = pp._histogram256(v)
            want, want_edges = np.histogram(v, bins=256, range=(0.0, 1.0))
            assert same(hist, want) and np.array_equal(got_edges, want_edges), (dtype, values[:3])


# --- whole pictures: the helpers against the library calls they replaced ----------------------------


def _library_paper_level(bg, k, w, h):
    bg = ndi.uniform_filter(bg, size=k, mode="nearest")
    if np.percentile(bg, 99) - np.percentile(bg, 1) < 0.03:
        return float(np.median(bg))
    return pp._resize(bg, w, h)


LIBRARY = {
    "_stats": lambda x, *qs, listed=False: pp._numpy_stats(x, qs, listed),
    "_grey_opening": lambda a, k: ndi.grey_opening(a, size=k),
    "_flat3": lambda a: ndi.maximum_filter(a, size=3, mode="nearest") == ndi.minimum_filter(a, size=3, mode="nearest"),
    "_dilate4": lambda m, iterations: ndi.binary_dilation(m, iterations=iterations),
    "_erode4": lambda m: ndi.binary_erosion(m, border_value=0),
    "_center_of_mass": ndi.center_of_mass,
    "_histogram256": lambda v: np.histogram(v, bins=256, range=(0.0, 1.0)),
    "_paper_level": _library_paper_level,
}


def png(a: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, "PNG")
    return buf.getvalue()


def pictures():
    """MNIST digits as users send them (both polarities, RGB, RGBA, upscaled, noisy, JPEG), photos on
    paper, files of USPS-like renders, hairlines, a bold block, blanks."""
    from digitlab.realbench import render_file
    from digitlab.realism import render_on_paper

    x = load_dataset("mnist").test_images[:120]
    rng = np.random.default_rng(7)
    for i, d in enumerate(x):
        yield png(255 - d), "mnist"
        yield png(d), "mnist"
        if i % 3 == 0:
            yield png(np.stack([255 - d, 255 - d // 2, 255 - d // 3], 2).astype(np.uint8)), "mnist"
            rgba = np.zeros((28, 28, 4), np.uint8)
            rgba[..., 3] = d
            yield png(rgba), "mnist"
        if i % 4 == 0:
            s = int(rng.integers(40, 300))
            yield Image.fromarray(255 - d).resize((s, s), Image.Resampling.BICUBIC), "mnist"
            yield np.clip(255 - d.astype(float) + rng.normal(0, 12, d.shape), 0, 255).astype(np.uint8), "mnist"
            yield render_on_paper(d, rng), "mnist"
            yield render_file(d / 255.0, rng, 48, 112)[0], "mnist"
        if i % 10 == 0:
            yield png(255 - d), "digits"
            yield Image.fromarray(255 - d).resize((150, 150), Image.Resampling.BICUBIC), "fashion"
    for _ in range(10):
        s = int(rng.integers(8, 120))
        img = Image.new("L", (s, int(rng.integers(8, 120))), 255)
        grey, width = int(rng.integers(0, 120)), int(rng.integers(1, 6))
        ImageDraw.Draw(img).line([(1, 1), (s - 2, s // 2)], fill=grey, width=width)
        yield img, "mnist"
    bold = np.zeros((28, 28), np.uint8)
    bold[3:25, 4:24] = 255
    bold[8:20, 10:18] = 0
    yield bold, "mnist"
    yield png(np.full((28, 28), 255, np.uint8)), "mnist"
    yield np.clip(np.random.default_rng(1).normal(200, 20, (200, 200)), 0, 255).astype(np.uint8), "mnist"


def outputs(items) -> list:
    out = []
    for source, target in items:
        try:
            out.append(pp.preprocess(source, target))
        except ImageError as exc:
            out.append(str(exc))
    return out


def test_preprocess_gives_the_same_bytes_as_with_the_library_calls(monkeypatch):
    items = list(pictures())
    fast = outputs(items)
    for name, fn in LIBRARY.items():
        monkeypatch.setattr(pp, name, fn)
    slow = outputs(items)
    assert len(items) > 400
    assert sum(isinstance(v, str) for v in slow) <= 3  # the blanks
    for i, (a, b) in enumerate(zip(fast, slow, strict=True)):
        assert type(a) is type(b) and (a == b if isinstance(a, str) else same(a, b)), i
