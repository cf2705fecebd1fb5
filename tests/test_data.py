"""Datasets, the IDX reader and its integrity checks, mirrors, splits and scalers."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from digitlab import data
from digitlab.data import Dataset, load_dataset, make_scaler, one_hot, read_idx, split
from digitlab.errors import ConfigError, DatasetError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# --- helpers -------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dtype = np.dtype(data.IDX_TYPES[code])
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype).tobytes()


def fake_files(n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict[str, bytes]:
    """Small valid IDX files (gzipped, deterministic) named like the official ones."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    return {f"{stem}.gz": gzip.compress(idx_bytes(a), mtime=0) for stem, a in arrays.items()}


def checksums_of(files: dict[str, bytes]) -> dict[str, tuple[str, str]]:
    md5 = lambda b: hashlib.md5(b).hexdigest()  # noqa: E731
    return {name.removesuffix(".gz"): (md5(b), md5(gzip.decompress(b))) for name, b in files.items()}


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No shared data, an empty cache and system folder: only what a test puts there is found."""
    paths = {k: tmp_path / k for k in ("env", "cache", "system")}
    for p in paths.values():
        p.mkdir()
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(paths["env"]))
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(paths["cache"]))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("DIGITLAB_FASHION_MIRRORS", "http://127.0.0.1:9/never-used/")
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", [paths["system"] / "fashion-mnist"])
    return paths


# --- the real datasets ---------------------------------------------------------------------------


def test_mnist_ships_with_the_package_and_has_the_official_counts():
    ds = load_dataset("mnist")
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    assert np.bincount(ds.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert ds.classes == [str(i) for i in range(10)] and ds.num_classes == 10
    assert ds.input_shape == (1, 28, 28) and ds.max_value == 255
    assert ds.train_images.max() == 255 and ds.train_images.min() == 0
    # Callers own their arrays: writing into one must not change the next load.
    ds.train_images[0] = 7
    assert load_dataset("mnist").train_images[0].max() == 255


def test_warm_mnist_load_is_well_under_a_second():
    load_dataset("mnist")
    start = time.perf_counter()
    load_dataset("mnist")
    assert time.perf_counter() - start < 0.5


def test_decoded_arrays_are_cached_on_disk_by_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path))
    data._load_checked_cached.cache_clear()
    first = load_dataset("mnist")
    cached = sorted(p.name for p in (tmp_path / "idx").glob("*.npy"))
    assert len(cached) == 4 and "-6bbc9ace898e44ae57da46a324031adb.npy" in " ".join(cached)
    assert not list((tmp_path / "idx").glob(".*tmp"))
    data._load_checked_cached.cache_clear()
    again = load_dataset("mnist")  # from the .npy files this time
    assert np.array_equal(first.train_images, again.train_images)
    assert np.array_equal(first.test_labels, again.test_labels)
    data._load_checked_cached.cache_clear()


def test_fashion_mnist_is_found_in_the_data_dir(shared_data):
    ds = load_dataset("fashion-mnist")  # conftest points DIGITLAB_DATA_DIR at ../shared/datasets
    assert ds.train_images.shape == (60000, 28, 28) and len(ds.test_labels) == 10000
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    for explicit in (shared_data, shared_data / "fashion-mnist"):
        assert load_dataset("fashion_mnist", data_dir=explicit).train_labels[:5].tolist() == \
            ds.train_labels[:5].tolist()


def test_digits_have_a_stratified_seeded_split():
    ds = load_dataset("digits")
    assert ds.train_images.shape == (1437, 8, 8) and len(ds.test_labels) == 360
    assert ds.train_images.dtype == np.uint8 and ds.max_value == 16 and ds.train_images.max() == 16
    train_share = np.bincount(ds.train_labels) / len(ds.train_labels)
    test_share = np.bincount(ds.test_labels) / len(ds.test_labels)
    assert np.abs(train_share - test_share).max() < 0.01
    assert np.array_equal(load_dataset("digits").test_labels, ds.test_labels)


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(DatasetError, match="mnist, fashion-mnist, digits, folder:PATH, openml:NAME"):
        load_dataset("cifar10")


# --- the IDX reader ------------------------------------------------------------------------------

GOOD = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))


def test_read_idx_reads_plain_and_gzipped_files(tmp_path):
    (tmp_path / "a").write_bytes(GOOD)
    (tmp_path / "a.gz").write_bytes(gzip.compress(GOOD))
    for source in (tmp_path / "a", tmp_path / "a.gz", GOOD):
        array = read_idx(source)
        assert array.shape == (2, 3, 4) and array.dtype == np.uint8 and array[1, 2, 3] == 23
        assert array.flags.writeable


@pytest.mark.parametrize("code", [0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_read_idx_handles_every_type_code_big_endian(code):
    values = np.array([[-3, 1000], [7, -120]]) if code != 0x09 else np.array([[-3, 100], [7, -120]])
    array = read_idx(idx_bytes(values, code))
    assert array.dtype.byteorder in "=|" and np.array_equal(array, values)


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        (GOOD[:-5], "truncated"),
        (gzip.compress(GOOD)[:-12], "truncated gzip"),
        (gzip.compress(GOOD)[:10] + b"\x00garbage\xff" * 4, "not a valid gzip"),
        (b"\x08\x03" + GOOD[2:], "not an IDX file"),
        (GOOD[:2] + b"\x07" + GOOD[3:], "unknown IDX type code 0x07"),
        (GOOD[:3] + b"\x05" + GOOD[4:], "over-claims"),  # 5 dimensions: the header eats the data
        (GOOD[:4] + np.asarray([2000, 3, 4], ">u4").tobytes() + GOOD[16:], "over-claims"),
        (GOOD + b"\x00\x00", "extra bytes"),
        (b"\x00\x00", "too short"),
    ],
    ids=["truncated", "truncated-gzip", "garbled-gzip", "wrong-magic", "bad-type", "too-many-dims",
         "over-claiming", "extra-bytes", "too-short"],
)
def test_read_idx_names_the_file_and_the_fault(tmp_path, content, fault):
    path = tmp_path / "broken-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    assert str(path) in str(err.value) and fault in str(err.value)


def test_read_idx_of_a_missing_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="Cannot read"):
        read_idx(tmp_path / "nope.gz")


# --- checksums and consistency, through load_dataset ---------------------------------------------


def test_an_explicit_data_dir_overrides_packaged_mnist(tmp_path, isolated, monkeypatch):
    files = fake_files()
    monkeypatch.setitem(data.CHECKSUMS, "mnist", checksums_of(files))
    write_files(tmp_path / "mine" / "mnist", files)
    ds = load_dataset("mnist", data_dir=tmp_path / "mine")
    assert len(ds.train_labels) == 30 and len(ds.test_labels) == 10
    assert ds.train_labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


@pytest.mark.parametrize("which", [0, 1])
def test_either_the_gz_or_the_uncompressed_checksum_is_accepted(tmp_path, isolated, monkeypatch, which):
    files = fake_files()
    table = {stem: (pair[which], "0" * 32) for stem, pair in checksums_of(files).items()}
    monkeypatch.setitem(data.CHECKSUMS, "mnist", table)
    assert len(load_dataset("mnist", data_dir=write_files(tmp_path / "d", files)).train_labels) == 30


def test_checksum_mismatch_is_refused(tmp_path, isolated):
    folder = write_files(tmp_path / "d", fake_files())  # valid IDX files, but not the official ones
    with pytest.raises(DatasetError, match="does not match the official mnist checksum") as err:
        load_dataset("mnist", data_dir=folder)
    assert str(folder / "train-images-idx3-ubyte.gz") in str(err.value)


def test_image_and_label_counts_must_agree(tmp_path, isolated, monkeypatch):
    files = fake_files()
    files["train-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(np.zeros(29, np.uint8)), mtime=0)
    monkeypatch.setitem(data.CHECKSUMS, "mnist", checksums_of(files))
    folder = write_files(tmp_path / "d", files)
    with pytest.raises(DatasetError, match="30 images but .* 29 labels") as err:
        load_dataset("mnist", data_dir=folder)
    assert "train-images-idx3-ubyte.gz" in str(err.value) and "train-labels-idx1-ubyte.gz" in str(err.value)


def test_a_corrupt_file_in_a_data_dir_is_reported_not_skipped(tmp_path, isolated, monkeypatch):
    files = fake_files()
    monkeypatch.setitem(data.CHECKSUMS, "fashion-mnist", checksums_of(files))
    files["t10k-images-idx3-ubyte.gz"] = files["t10k-images-idx3-ubyte.gz"][:200]
    write_files(isolated["env"] / "fashion-mnist", files)
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist")


# --- mirrors -------------------------------------------------------------------------------------


@pytest.fixture
def mirror_server():
    """Local mirrors: /m404/ answers 404, /html/ an HTML page, /good/ the fake files, /wrong/ other files."""
    good, wrong = fake_files(seed=1), fake_files(seed=2)
    log: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            log.append(self.path)
            mirror, _, name = self.path.strip("/").partition("/")
            if mirror == "html":
                body, kind = b"<!DOCTYPE html><html><body>Moved</body></html>", "text/html"
            elif mirror in ("good", "wrong") and name in good:
                body, kind = (good if mirror == "good" else wrong)[name], "application/gzip"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield base, good, log
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mirror_fallback_404_then_html_then_good(isolated, mirror_server, monkeypatch):
    base, good, log = mirror_server
    monkeypatch.setitem(data.CHECKSUMS, "fashion-mnist", checksums_of(good))
    monkeypatch.setenv("DIGITLAB_FASHION_MIRRORS", f"{base}/m404/, {base}/html/,{base}/good/")
    ds = load_dataset("fashion-mnist")
    assert len(ds.train_labels) == 30 and ds.classes[0] == "T-shirt/top"
    assert log[:3] == ["/m404/train-images-idx3-ubyte.gz", "/html/train-images-idx3-ubyte.gz",
                       "/good/train-images-idx3-ubyte.gz"]
    target = isolated["cache"] / "fashion-mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(good)  # no temp files left behind
    assert (target / "t10k-labels-idx1-ubyte.gz").read_bytes() == good["t10k-labels-idx1-ubyte.gz"]
    requests = len(log)
    load_dataset("fashion-mnist")  # now from the cache, no request
    assert len(log) == requests


def test_a_mirror_serving_a_wrong_checksum_is_skipped(isolated, mirror_server, monkeypatch):
    base, good, log = mirror_server
    monkeypatch.setitem(data.CHECKSUMS, "fashion-mnist", checksums_of(good))
    monkeypatch.setenv("DIGITLAB_FASHION_MIRRORS", f"{base}/wrong/,{base}/good/")
    ds = load_dataset("fashion-mnist")
    assert np.array_equal(ds.train_images[0], read_idx(good["train-images-idx3-ubyte.gz"])[0])
    assert "/wrong/train-images-idx3-ubyte.gz" in log


def test_a_mirror_that_times_out_is_skipped(isolated, mirror_server, monkeypatch):
    base, good, _ = mirror_server
    monkeypatch.setitem(data.CHECKSUMS, "fashion-mnist", checksums_of(good))
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT", 0.3)
    with socket.socket() as silent:  # accepts connections into its backlog, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("DIGITLAB_FASHION_MIRRORS", f"http://127.0.0.1:{silent.getsockname()[1]}/,{base}/good/")
        assert len(load_dataset("fashion-mnist").test_labels) == 10


def test_offline_error_names_every_place_and_every_failure(tmp_path, isolated, mirror_server, monkeypatch):
    base, good, _ = mirror_server
    monkeypatch.setitem(data.CHECKSUMS, "fashion-mnist", checksums_of(good))
    mirrors = [f"{base}/m404/", f"{base}/html/", f"{base}/wrong/", f"http://127.0.0.1:{closed_port()}/"]
    monkeypatch.setenv("DIGITLAB_FASHION_MIRRORS", ",".join(mirrors))
    explicit = tmp_path / "explicit"
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", data_dir=explicit)
    message = str(err.value)
    for place in (explicit, explicit / "fashion-mnist", isolated["env"] / "fashion-mnist",
                  isolated["cache"] / "fashion-mnist", isolated["system"] / "fashion-mnist"):
        assert str(place) in message
    for fault in ("HTTP 404", "HTML page", "checksum", "cannot connect", "apt-get install dataset-fashion-mnist",
                  "DIGITLAB_DATA_DIR"):
        assert fault in message
    assert not list((isolated["cache"] / "fashion-mnist").glob("*"))  # nothing written half-way


# --- folder: and openml: -------------------------------------------------------------------------


def draw_digit(path: Path, label: int, size: int = 64, light: bool = True, shift: int = 0) -> None:
    image = Image.new("L", (size, size), 255 if light else 0)
    pen = ImageDraw.Draw(image)
    ink = 0 if light else 255
    x0 = 16 + shift
    if label == 0:
        pen.ellipse((x0, 10, x0 + 28, 54), outline=ink, width=6)
    else:
        pen.line((x0 + 14, 8, x0 + 14, 56), fill=ink, width=6)
    image.save(path)


def make_folder(root: Path, per_class: int = 10) -> Path:
    for label, name in enumerate(("circle", "stroke")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            draw_digit(root / name / f"{i}.png", label, light=i % 2 == 0, shift=i % 5)
    (root / "stroke" / "notes.txt").write_text("not an image: ignored")
    return root


@pytest.mark.parametrize("hook", ["fallback", "package"])
def test_folder_dataset_converts_images_the_mnist_way(tmp_path, monkeypatch, hook):
    if hook == "fallback":
        monkeypatch.setattr(data, "_preprocess_hook", lambda: None)
    elif data._preprocess_hook() is None:
        pytest.skip("digitlab.preprocess is not there yet")
    ds = load_dataset(f"folder:{make_folder(tmp_path / 'shapes')}")
    assert ds.classes == ["circle", "stroke"] and ds.max_value == 255
    assert ds.train_images.shape == (16, 28, 28) and ds.test_images.shape == (4, 28, 28)
    assert np.bincount(ds.test_labels).tolist() == [2, 2]  # stratified 80/20
    images = np.concatenate([ds.train_images, ds.test_images])
    assert images.dtype == np.uint8 and images.max() > 200
    assert (images[:, 0, :] < 40).all() and (images[:, :, 0] < 40).all()  # ink light, border dark


def test_simple_mnist_fallback_centres_and_scales(tmp_path):
    draw_digit(tmp_path / "one.png", 1, size=120, light=True, shift=40)
    out = data._simple_mnist(tmp_path / "one.png")
    rows, cols = np.nonzero(out > 32)
    assert out.shape == (28, 28) and rows.max() - rows.min() + 1 in (19, 20, 21)
    mass = out.astype(float)
    cy = (mass.sum(1) * np.arange(28)).sum() / mass.sum()
    cx = (mass.sum(0) * np.arange(28)).sum() / mass.sum()
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1


def test_folder_with_train_and_test_subfolders_keeps_that_split(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_preprocess_hook", lambda: None)
    make_folder(tmp_path / "set" / "train", per_class=4)
    make_folder(tmp_path / "set" / "test", per_class=2)
    ds = load_dataset(f"folder:{tmp_path / 'set'}")
    assert len(ds.train_labels) == 8 and len(ds.test_labels) == 4 and ds.classes == ["circle", "stroke"]


def test_folder_with_a_bad_image_names_it(tmp_path):
    root = make_folder(tmp_path / "shapes", per_class=3)
    bad = root / "circle" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match="broken.png"):
        load_dataset(f"folder:{root}")


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path}")


class FakeBunch:
    def __init__(self, data_, target):
        self.data, self.target = data_, target


def test_openml_images_are_squared_and_split_like_mnist_784(monkeypatch):
    from sklearn import datasets as skdatasets

    calls = {}

    def fake_fetch(name, **kwargs):
        calls.update(kwargs, name=name)
        x = np.tile(np.array([0.0, 255.0, 128.0, 3.0]), (70000, 1))
        return FakeBunch(x, np.array([str(i % 10) for i in range(70000)], dtype=object))

    monkeypatch.setattr(skdatasets, "fetch_openml", fake_fetch)
    ds = load_dataset("openml:mnist_784")
    assert calls["name"] == "mnist_784" and calls["as_frame"] is False and "openml" in calls["data_home"]
    assert ds.train_images.shape == (60000, 2, 2) and ds.test_images.shape == (10000, 2, 2)
    assert ds.train_images.dtype == np.uint8 and ds.train_images[0].tolist() == [[0, 255], [128, 3]]
    assert ds.classes == [str(i) for i in range(10)] and ds.train_labels[:3].tolist() == [0, 1, 2]


def test_openml_small_sets_are_split_80_20_and_offline_is_a_clear_error(monkeypatch):
    from sklearn import datasets as skdatasets

    labels = np.array(["10", "9", "2"] * 20)
    monkeypatch.setattr(skdatasets, "fetch_openml", lambda name, **kw: FakeBunch(np.ones((60, 9)), labels))
    ds = load_dataset("openml:tiny")
    assert ds.classes == ["2", "9", "10"] and len(ds.test_labels) == 12 and ds.input_shape == (1, 3, 3)

    def offline(name, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(skdatasets, "fetch_openml", offline)
    with pytest.raises(DatasetError, match="OpenML dataset 'mnist_784' could not be loaded.*internet"):
        load_dataset("openml:mnist_784")


# --- splits --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist")


@pytest.mark.parametrize(
    ("scheme", "sizes"),
    [("notebook-000", (60000, 5000, 5000)), ("notebook-003", (55000, 5000, 10000)),
     ("notebook-001", (42000, 18000, 10000)), ("default", (55000, 5000, 10000)), ("none", (60000, 0, 10000))],
)
def test_split_scheme_sizes(mnist, scheme, sizes):
    s = split(mnist, scheme)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == sizes and s.scheme == scheme
    assert s.train_x.dtype == np.uint8 and s.val_x.shape[1:] == (28, 28) and s.val_y.dtype == np.int64
    assert s.classes == mnist.classes and s.max_value == 255


def test_notebook_splits_are_the_notebooks_own(mnist):
    from sklearn.model_selection import train_test_split

    s = split(mnist, "notebook-000")
    # The notebook splits OpenML's string labels (train then test); the same split, done the notebook's way:
    pooled = np.concatenate([mnist.train_labels, mnist.test_labels]).astype(str)
    ids = np.arange(70000)
    rest, test, y_rest, _ = train_test_split(ids, pooled, test_size=5_000, stratify=pooled, random_state=42)
    _, val = train_test_split(rest, test_size=5_000, stratify=y_rest, random_state=42)
    pooled_x = np.concatenate([mnist.train_images, mnist.test_images])
    assert np.array_equal(s.test_x, pooled_x[test]) and np.array_equal(s.val_x, pooled_x[val])
    s3 = split(mnist, "notebook-003")
    assert np.array_equal(s3.val_x, mnist.train_images[:5000]) and np.array_equal(s3.test_y, mnist.test_labels)
    s1 = split(mnist, "nb001")
    assert np.array_equal(s1.val_y, mnist.train_labels[42000:]) and s1.scheme == "notebook-001"


def test_default_split_is_stratified_and_seeded(mnist):
    s = split(mnist, "default", val_size=5000, seed=7)
    expected = np.bincount(mnist.train_labels) * 5000 / 60000
    assert np.abs(np.bincount(s.val_y) - expected).max() <= 1
    assert np.array_equal(split(mnist, seed=7).val_y, s.val_y)
    assert not np.array_equal(split(mnist, seed=8).val_y, s.val_y)


def test_split_is_cached_on_disk_and_equals_scikit_learns(tmp_path, monkeypatch):
    from sklearn.model_selection import train_test_split

    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path))
    labels = np.random.default_rng(0).integers(0, 10, 3000)
    ref = train_test_split(np.arange(3000), test_size=500, stratify=labels, random_state=3)
    first = data._stratified_split(labels, 500, 3)
    [saved] = (tmp_path / "splits").glob("*.npz")
    second = data._stratified_split(labels, 500, 3)  # read back from the file
    for got in (first, second):
        assert all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True))
    # Other labels, sizes or seeds are other entries, never the cached answer.
    assert not np.array_equal(data._stratified_split(labels, 500, 4)[1], ref[1])
    assert len(list((tmp_path / "splits").glob("*.npz"))) == 2
    saved.write_bytes(b"not an npz file")  # a damaged entry is computed again
    assert np.array_equal(data._stratified_split(labels, 500, 3)[1], ref[1])


def test_digitlab_train_imports_nothing_it_does_not_need(tmp_path, monkeypatch):
    """`digitlab train`, report included, in a fresh process: scikit-learn's import is ~1.5 s of CPU and
    scipy's, optuna's, FastAPI's and ONNX's are more; none of them is on the training path (the split
    comes from the cache, filled by the first run, and the metrics are numpy)."""
    import os
    import subprocess
    import sys

    # The split cache is filled here, as a first run would: with it the run needs no scikit-learn.
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path / "cache"))
    split(load_dataset("mnist"), "default", 5000, seed=42)
    env = {**os.environ, "DIGITLAB_CACHE_DIR": str(tmp_path / "cache")}
    code = (
        "import sys\n"
        "from digitlab.cli import app\n"
        "try:\n"
        f"    app(['train', '--train-subset', '600', '--epochs', '1', '--runs-dir', {str(tmp_path / 'runs')!r}, "
        "'--name', 'r', '--quiet'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "unwanted = ('sklearn', 'scipy', 'optuna', 'fastapi', 'starlette', 'uvicorn', 'onnx', 'onnxruntime')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in unwanted)[:5])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    # The run it measured is complete: the report and its figures were written before the process ended.
    run = tmp_path / "runs" / "r"
    for name in ("config.json", "history.csv", "metrics.json", "model.json", "report.html"):
        assert (run / name).is_file(), name
    assert len(list((run / "figures").glob("*.png"))) >= 4


def test_default_split_caps_validation_at_ten_percent_for_small_sets():
    s = split(load_dataset("digits"))
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (1294, 143, 360)


def test_unknown_split_scheme_lists_the_valid_ones(mnist):
    with pytest.raises(ConfigError, match="default, notebook-000, notebook-001, notebook-003, none"):
        split(mnist, "random")
    with pytest.raises(ConfigError, match="only 1797"):
        split(load_dataset("digits"), "notebook-000")


# --- scalers -------------------------------------------------------------------------------------

RNG = np.random.default_rng(3)
TRAIN = RNG.integers(0, 200, (50, 4, 5)).astype(np.uint8)
TRAIN[:, 0, 0] = 0  # a constant pixel: its std is 0 and must become 1
TEST = RNG.integers(0, 256, (20, 4, 5)).astype(np.uint8)


def test_unit_and_symmetric_scalers():
    unit = make_scaler("unit").fit(TRAIN).transform(TEST)
    assert unit.dtype == torch.float32 and unit.shape == (20, 4, 5)
    assert torch.allclose(unit, torch.from_numpy(TEST / 255).float())
    sym = make_scaler("symmetric").fit(TRAIN)
    train_scaled = sym.transform(TRAIN)
    assert train_scaled.min().item() == pytest.approx(-1) and train_scaled.max().item() == pytest.approx(1)
    expected = 2 * (TEST.astype(float) - TRAIN.min()) / (TRAIN.max() - TRAIN.min()) - 1
    assert np.allclose(sym.transform(TEST).numpy(), expected, atol=1e-5)
    assert make_scaler("unit", max_value=16).transform(np.full((1, 8, 8), 16, np.uint8)).max().item() == 1


def test_standard_scaler_matches_sklearn_and_uses_train_statistics_only():
    from sklearn.preprocessing import StandardScaler

    ours = make_scaler("standard").fit(TRAIN)
    theirs = StandardScaler().fit(TRAIN.reshape(50, -1).astype(np.float64))
    expected = theirs.transform(TEST.reshape(20, -1).astype(np.float64)).reshape(20, 4, 5)
    assert np.allclose(ours.transform(TEST).numpy(), expected, atol=1e-4)
    both = make_scaler("standard").fit(np.concatenate([TRAIN, TEST]))
    assert not torch.allclose(both.transform(TEST), ours.transform(TEST), atol=1e-3)
    assert np.allclose(np.asarray(ours.to_dict()["stats"]["mean"]), TRAIN.mean(0))


def test_mean_std_scaler_fitted_or_fixed():
    fitted = make_scaler("mean-std").fit(TRAIN)
    scaled = fitted.transform(TRAIN).numpy()
    assert abs(scaled.mean()) < 1e-5 and scaled.std() == pytest.approx(1, abs=1e-4)
    fixed = make_scaler("mean-std", mean=0.1307, std=0.3081).fit(TEST)  # given values are kept
    assert fixed.transform(np.array([[[255]]], np.uint8)).item() == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-5)


def test_scaler_accepts_numpy_and_torch_and_round_trips_json():
    scaler = make_scaler("standard").fit(torch.from_numpy(TRAIN))
    from_numpy = scaler.transform(TEST)
    from_torch = scaler.transform(torch.from_numpy(TEST))
    from_float = scaler(torch.from_numpy(TEST).double())
    assert torch.equal(from_numpy, from_torch) and torch.allclose(from_float, from_numpy)
    assert from_torch.device == torch.device("cpu")
    batch = scaler.transform(torch.from_numpy(TEST).unsqueeze(1))  # (N, 1, H, W) keeps its shape
    assert batch.shape == (20, 1, 4, 5)
    restored = data.Scaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert torch.equal(restored.transform(TEST), from_numpy)
    fixed = data.Scaler.from_dict(make_scaler("mean-std", mean=0.5, std=0.25).to_dict())
    assert fixed.fixed and fixed.fit(TRAIN).stats["mean"] == 0.5


def test_scaler_errors_are_clear():
    with pytest.raises(ConfigError, match="not fitted"):
        make_scaler("standard").transform(TEST)
    with pytest.raises(ConfigError, match="unit, symmetric, standard, mean-std"):
        make_scaler("log")
    with pytest.raises(ConfigError, match="both mean and std"):
        make_scaler("mean-std", mean=0.1)
    with pytest.raises(ConfigError, match="takes no option"):
        make_scaler("unit", mean=0.1)


def test_one_hot():
    encoded = one_hot(np.array([2, 0, 1]), 3)
    assert encoded.dtype == np.float32 and encoded.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    with pytest.raises(DatasetError, match="0..2"):
        one_hot([3], 3)


def test_pixel_moments_of_8_bit_images_are_exact():
    # The integer path (uint8 images) and the float64 passes agree, and both match numpy's own.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(20_000, 6, 5)).astype(np.uint8)
    x[:, 0, 0] = 255  # a constant pixel: variance exactly 0
    mean, var = data._pixel_moments(x)
    f_mean, f_var = data._pixel_moments(x.astype(np.float32))
    assert np.allclose(mean, x.mean(0)) and np.allclose(var, x.var(0), rtol=1e-12)
    assert np.allclose(mean, f_mean, rtol=1e-12) and np.allclose(var, f_var, rtol=1e-9)
    assert var[0, 0] == 0.0
    a8, b8 = make_scaler("mean-std").fit(x).affine()
    af, bf = make_scaler("mean-std").fit(x.astype(np.float32)).affine()
    assert np.float32(a8) == np.float32(af) and np.float32(b8) == np.float32(bf)
