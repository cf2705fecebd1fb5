"""Domain randomisation (digitlab.realism) and the USPS dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digitlab import realism
from digitlab.config import TrainConfig
from digitlab.errors import DatasetError


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from digitlab.data import load_dataset

    return torch.as_tensor(load_dataset("mnist").test_images[:64]).float().unsqueeze(1)


@pytest.mark.parametrize("name", realism.TRANSFORMS)
def test_each_transform_keeps_shape_and_range_and_repeats_by_seed(digits, name):
    fn = realism._APPLY[name]
    a = fn(digits, 1.0, torch.Generator().manual_seed(3))
    b = fn(digits, 1.0, torch.Generator().manual_seed(3))
    c = fn(digits, 1.0, torch.Generator().manual_seed(4))
    assert a.shape == digits.shape and a.dtype == digits.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 255.0 + 1e-3
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, digits)  # p = 1: every digit is changed
    # every digit keeps its ink
    assert bool((a.flatten(1).amax(1) > 100).all())


@pytest.mark.parametrize("name", realism.TRANSFORMS)
def test_probability_zero_leaves_the_batch_alone(digits, name):
    out = realism._APPLY[name](digits, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, digits)


def test_stretch_widens_narrow_digits_toward_a_square(digits):
    out = realism.stretch(digits, 1.0, torch.Generator().manual_seed(0))

    def aspect(x):
        width, height = (x[:, 0] > 20).any(1).sum(1).float(), (x[:, 0] > 20).any(2).sum(1).float()
        return torch.minimum(width, height) / torch.maximum(width, height)

    assert float(aspect(out).mean()) > float(aspect(digits).mean()) + 0.1
    assert bool((aspect(out) >= aspect(digits) - 0.1).all())


def test_randomise_applies_only_the_configured_transforms(digits):
    off = realism.randomise(digits, TrainConfig(), torch.Generator().manual_seed(0))
    assert torch.equal(off, digits)
    cfg = TrainConfig(aug_scan=1.0)
    assert realism.enabled(cfg) and not realism.enabled(TrainConfig())
    on = realism.randomise(digits, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(on, realism.scan(digits, 1.0, torch.Generator().manual_seed(0)))


def test_render_through_preprocess_gives_mnist_style_digits(digits):
    x = digits[:8, 0].numpy().astype(np.uint8)
    out = realism.render_through_preprocess(x, seed=0)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert (out.reshape(8, -1).max(1) == 255).all()
    assert not np.array_equal(out, x)
    assert np.array_equal(out, realism.render_through_preprocess(x, seed=0))


# --- USPS ---------------------------------------------------------------------------------------


def test_usps_loads_the_mnist_way_with_a_held_out_stratified_split(shared_data):
    from scipy import ndimage as ndi

    from digitlab.data import USPS_VAL_SIZE, load_dataset, usps_val_raw

    ds = load_dataset("usps")
    assert ds.train_images.shape == (7291 - USPS_VAL_SIZE, 28, 28) and ds.test_images.shape == (USPS_VAL_SIZE, 28, 28)
    assert ds.train_images.dtype == np.uint8 and ds.train_images.max() == 255
    counts = np.bincount(np.concatenate([ds.train_labels, ds.test_labels]))
    assert counts.tolist() == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    # stratified: each class's share of the held-out split is its share of the whole, within one digit
    expected = counts * USPS_VAL_SIZE / counts.sum()
    assert np.abs(np.bincount(ds.test_labels) - expected).max() <= 1.0
    # MNIST's normalisation: ink 20 px on its longest side, centre of mass near (14, 14)
    img = ds.train_images[0].astype(float)
    rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (20, 21)
    assert np.allclose(ndi.center_of_mass(img), (14, 14), atol=1.0)
    # the split is fixed: the same digits every time, and never in training
    again = load_dataset("usps")
    assert np.array_equal(again.test_images, ds.test_images)
    train_rows = {r.tobytes() for r in ds.train_images}
    assert sum(r.tobytes() in train_rows for r in ds.test_images) < 10  # only exact duplicates in USPS itself
    grey, labels = usps_val_raw()
    assert grey.shape == (USPS_VAL_SIZE, 16, 16) and np.array_equal(labels, ds.test_labels)


def test_usps_is_found_through_data_dir_and_reports_where_it_looked(shared_data, tmp_path, monkeypatch):
    from digitlab.data import load_dataset

    monkeypatch.delenv("DIGITLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match="USPS .* was not found in .*DIGITLAB_DATA_DIR"):
        load_dataset("usps")
    assert len(load_dataset("usps", data_dir=shared_data).train_labels) == 5791
    assert len(load_dataset("usps", data_dir=shared_data / "usps").train_labels) == 5791


def test_a_damaged_usps_file_is_one_clear_error(tmp_path):
    from digitlab.data import parse_usps

    with pytest.raises(DatasetError, match="not 256"):
        parse_usps(b"1 0.5 0.5\n")
    with pytest.raises(DatasetError, match="not a USPS file"):
        parse_usps(b"hello world\n")


def test_combined_datasets_concatenate_training_digits_and_keep_the_first_test_set(shared_data):
    from digitlab.data import load_dataset, split

    both = load_dataset("mnist+usps")
    mnist, usps = load_dataset("mnist"), load_dataset("usps")
    assert len(both.train_labels) == len(mnist.train_labels) + len(usps.train_labels)
    assert np.array_equal(both.test_labels, mnist.test_labels)
    sp = split(both)
    held_out = {r.tobytes() for r in usps.test_images}
    seen = sum(r.tobytes() in held_out for r in np.concatenate([sp.train_x, sp.val_x]))
    assert seen < 10  # USPS's own exact duplicates at most
    with pytest.raises(DatasetError, match="cannot be combined"):
        load_dataset("mnist+digits")


def test_european_styles_redraw_only_ones_and_sevens_with_more_ink_repeatably():
    from digitlab.data import load_dataset

    ds = load_dataset("mnist")
    x, y = ds.test_images[:300], ds.test_labels[:300]
    a, la = realism.european_styles(x, y, seed=1)
    b, lb = realism.european_styles(x, y, seed=1)
    c, _ = realism.european_styles(x, y, seed=2)
    picked = np.isin(y, (1, 7))
    assert a.shape == (picked.sum(), 28, 28) and a.dtype == np.uint8
    assert np.array_equal(la, y[picked]) and set(la.tolist()) == {1, 7}
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # the flag widens a 1: its ink box (still 20 px tall the MNIST way) gets wider than the plain 1's
    def width(img: np.ndarray) -> int:
        cols = np.flatnonzero((img > 60).any(0))
        return int(cols[-1] - cols[0] + 1)
    ones = np.flatnonzero(y[picked] == 1)
    plain_ones = x[picked][ones]
    assert np.median([width(i) for i in a[ones]]) > np.median([width(i) for i in plain_ones]) + 2
    # the centre of mass stays where MNIST puts it
    yy, xx = np.mgrid[0:28, 0:28]
    m = a.astype(float).sum((1, 2))
    assert np.allclose((a * yy).sum((1, 2)) / m, 14, atol=1.0) and np.allclose((a * xx).sum((1, 2)) / m, 14, atol=1.0)


def test_restyled_dataset_holds_the_restyled_ones_and_sevens_and_combines(shared_data):
    from digitlab.data import load_dataset

    ds = load_dataset("restyled:usps")
    usps = load_dataset("usps")
    assert len(ds.train_labels) == int(np.isin(usps.train_labels, (1, 7)).sum())
    assert np.array_equal(ds.test_labels, usps.test_labels)
    both = load_dataset("usps+restyled:usps")
    assert len(both.train_labels) == len(usps.train_labels) + len(ds.train_labels)
    with pytest.raises(DatasetError, match="restyled:fashion-mnist needs"):
        load_dataset("restyled:fashion-mnist")
