"""digitlab.plots: every figure is written, has the expected size and shows something."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitlab import plots
from digitlab.evaluate import evaluate_predictions

MNIST = Path(__file__).resolve().parents[1] / "digitlab" / "_data" / "mnist"
DIGITS = [str(i) for i in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def _read(name: str, offset: int) -> np.ndarray:
    with gzip.open(MNIST / name) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


@pytest.fixture(scope="module")
def mnist_eval() -> dict:
    """Real images and the predictions of a nearest-centroid classifier (softmax over distances)."""
    images = _read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    x = images[:4000].reshape(-1, 784).astype(np.float64) / 255
    centroids = np.stack([x[:2000][labels[:2000] == c].mean(axis=0) for c in range(10)])
    dist = ((x[2000:, None, :] - centroids[None]) ** 2).sum(axis=2)
    logits = -dist / 4.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    y = labels[2000:4000]
    return {
        "images": images[2000:4000],
        "y": y,
        "probs": probs,
        "metrics": evaluate_predictions(y, probs, DIGITS),
        "centroids": centroids.reshape(10, 28, 28),
    }


def _history(epochs: int = 12, offset: float = 0.0) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 1 / (e + 1) + 0.05,
            "val_loss": 1 / (e + 1) + 0.1 + 0.004 * e,
            "train_acc": 1 - 0.3 / (e + 1),
            "val_acc": 0.95 - 0.3 / (e + 1) + offset,
            "lr": 0.1 * 0.9**e,
        }
        for e in range(1, epochs + 1)
    ]


def check_png(path: Path, width: tuple[int, int], height: tuple[int, int]) -> np.ndarray:
    """The file is a PNG of a plausible size, not one flat colour; no temp file is left behind."""
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        pixels = np.asarray(im.convert("RGB"))
    assert width[0] <= w <= width[1], f"width {w}"
    assert height[0] <= h <= height[1], f"height {h}"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]
    return pixels


def test_learning_curves(tmp_path):
    out = plots.learning_curves(_history(), tmp_path / "curves.png", title="mlp on mnist")
    assert out == tmp_path / "curves.png"
    check_png(out, (900, 1300), (350, 550))


def test_learning_curves_without_validation_and_single_epoch(tmp_path):
    # Runs without a validation split write empty cells (NaN or "" from the CSV).
    rows = [dict(r, val_loss=math.nan, val_acc="") for r in _history()]
    check_png(plots.learning_curves(rows, tmp_path / "train_only.png"), (900, 1300), (350, 550))
    check_png(plots.learning_curves(_history(1), tmp_path / "one.png"), (900, 1300), (350, 550))
    with pytest.raises(ValueError, match="at least one epoch"):
        plots.learning_curves([], tmp_path / "none.png")


def test_confusion_matrix(tmp_path, mnist_eval):
    cm = mnist_eval["metrics"]["confusion_matrix"]
    out = plots.confusion_matrix(cm, DIGITS, tmp_path / "cm.png", normalize=True)
    check_png(out, (800, 1200), (700, 1100))
    # Fashion-MNIST's long names (rotated tick labels) with counts
    check_png(plots.confusion_matrix(cm, FASHION, tmp_path / "cm.png", title="Fashion"), (800, 1200),
              (700, 1100))
    with pytest.raises(ValueError, match="10x10"):
        plots.confusion_matrix(np.ones((3, 3)), FASHION, tmp_path / "bad.png")


def _dark_cell_centre(path: Path) -> tuple[float, float]:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    heatmap = pixels[:, : int(pixels.shape[1] * 0.75)]  # leave out the colour bar on the right
    dark_blue = (heatmap[..., 2] > 80) & (heatmap[..., 0] < 40) & (heatmap[..., 1] < 80)
    rows, cols = np.nonzero(dark_blue)
    assert len(rows) > 1000
    return rows.mean(), cols.mean()


def test_confusion_matrix_orientation_in_the_picture(tmp_path):
    # Rows are true classes from the top, columns predicted from the left: all true 0 predicted
    # as 1 is the top-right cell, all true 1 predicted as 0 the bottom-left one.
    top_right = plots.confusion_matrix([[0, 50], [0, 0]], ["0", "1"], tmp_path / "a.png")
    bottom_left = plots.confusion_matrix([[0, 0], [50, 0]], ["0", "1"], tmp_path / "b.png")
    check_png(top_right, (400, 1200), (400, 1100))
    (r1, c1), (r2, c2) = _dark_cell_centre(top_right), _dark_cell_centre(bottom_left)
    assert r1 < r2 - 100 and c1 > c2 + 100


def test_hardest_examples(tmp_path, mnist_eval):
    hard = mnist_eval["metrics"]["hardest"]
    idx = [h["index"] for h in hard]
    out = plots.hardest_examples(
        mnist_eval["images"][idx], [h["true"] for h in hard], [h["pred"] for h in hard],
        [h["prob_true"] for h in hard], DIGITS, tmp_path / "hard.png",
    )
    check_png(out, (600, 1000), (800, 1300))
    with pytest.raises(ValueError, match="same length"):
        plots.hardest_examples(mnist_eval["images"][:3], [0], [1], [0.1], DIGITS, tmp_path / "bad.png")


def test_prediction_grid(tmp_path, mnist_eval):
    pred = mnist_eval["probs"].argmax(axis=1)
    out = plots.prediction_grid(mnist_eval["images"], mnist_eval["y"], pred, DIGITS, tmp_path / "grid.png")
    pixels = check_png(out, (700, 1100), (900, 1400))
    # Titles in the right/wrong colours are there.
    green = (pixels[..., 1] > 100) & (pixels[..., 0] < 60) & (pixels[..., 2] < 90)
    assert green.sum() > 200
    small = plots.prediction_grid(mnist_eval["images"][:4], mnist_eval["y"][:4], pred[:4], DIGITS,
                                  tmp_path / "small.png")
    check_png(small, (300, 1000), (150, 500))


def test_f1_bars(tmp_path, mnist_eval):
    out = plots.f1_bars(mnist_eval["metrics"]["report"], DIGITS, tmp_path / "f1.png")
    check_png(out, (800, 1300), (400, 600))
    with pytest.raises(ValueError, match="missing"):
        plots.f1_bars(mnist_eval["metrics"]["report"], FASHION, tmp_path / "bad.png")


def test_reliability_diagram(tmp_path, mnist_eval):
    m = mnist_eval["metrics"]
    check_png(plots.reliability_diagram(m["reliability"], m["ece"], tmp_path / "rel.png"), (500, 800),
              (600, 900))


def test_compare_curves(tmp_path):
    curves = {"mlp": _history(), "cnn": _history(8, offset=0.02), "no-val": [{"epoch": 1, "val_acc": ""}]}
    check_png(plots.compare_curves(curves, tmp_path / "cmp.png"), (700, 1100), (400, 650))
    check_png(plots.compare_curves(curves, tmp_path / "loss.png", metric="train_loss"), (700, 1100),
              (400, 650))
    with pytest.raises(ValueError, match="no run has values"):
        plots.compare_curves(curves, tmp_path / "bad.png", metric="seconds")


def test_image_grid_shared_diverging_colour_bar(tmp_path, mnist_eval):
    masks = mnist_eval["centroids"] - mnist_eval["centroids"].mean(axis=0)
    m = float(np.abs(masks).max())
    out = plots.image_grid(masks, [f"class {c}" for c in DIGITS], tmp_path / "masks.png", ncols=5,
                           cmap="RdBu_r", vmin=-m, vmax=m, colorbar=True, suptitle="Mean image minus the average",
                           colorbar_label="difference")
    pixels = check_png(out, (600, 1100), (300, 500)).astype(int)
    red = (pixels[..., 0] > 150) & (pixels[..., 2] < 100)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 100)
    assert red.sum() > 500 and blue.sum() > 500
    # (N, 1, H, W) tensors-like input and no titles work too
    check_png(plots.image_grid(mnist_eval["images"][:20, None], None, tmp_path / "plain.png"), (500, 1300),
              (150, 400))
    with pytest.raises(ValueError, match="titles"):
        plots.image_grid(mnist_eval["images"][:3], ["a"], tmp_path / "bad.png")


def test_figures_leave_no_pyplot_state(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.learning_curves(_history(3), tmp_path / "a.png")
    assert plt.get_fignums() == before


def test_mosaic_places_tiles_with_gaps_and_title_room():
    tiles = np.ones((5, 4, 3, 4))
    canvas, origins = plots.mosaic(tiles, ncols=2, gap=2, title_gap=3)
    assert canvas.shape == (3 * (4 + 2 + 3) - 2, 2 * (3 + 2) - 2, 4)
    assert origins == [(3, 0), (3, 5), (12, 0), (12, 5), (21, 0)]
    assert canvas[..., 3].sum() == 5 * 4 * 3  # only the tiles are opaque
    assert canvas[0, 0, 3] == 0 and canvas[3, 0, 3] == 1


def test_image_grid_per_image_colour_maps_and_opacity(tmp_path, mnist_eval):
    masks = mnist_eval["centroids"][:4]
    out = plots.image_grid(masks, ["a", "b", "c", "d"], tmp_path / "tinted.png", ncols=4,
                           cmap=["Greens", "Greens", "Reds", "Reds"], alphas=[1.0, 0.0, 1.0, 0.0], vmin=0, vmax=1)
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    w = pixels.shape[1]
    quarters = [pixels[:, i * w // 4: (i + 1) * w // 4] for i in range(4)]
    greenish = [((q[..., 1] - q[..., 0]) > 60).sum() for q in quarters]
    reddish = [((q[..., 0] - q[..., 1]) > 60).sum() for q in quarters]
    assert greenish[0] > 200 and reddish[2] > 200  # opaque tiles in their colour maps
    assert greenish[1] == 0 and reddish[3] == 0  # fully transparent tiles leave white
    with pytest.raises(ValueError, match="colour maps and alphas"):
        plots.image_grid(masks, None, tmp_path / "bad.png", cmap=["gray"])


def test_single_epoch_has_one_whole_tick(tmp_path):
    # Spy on the axes the figure draws: a one-epoch run (the default recipe) shows the tick "1" only.
    from matplotlib.figure import Figure

    seen = []
    original = Figure.savefig

    def spy(self, *args, **kwargs):
        seen.extend(ax.get_xticks().tolist() for ax in self.axes)
        return original(self, *args, **kwargs)

    Figure.savefig = spy
    try:
        plots.learning_curves(_history(1), tmp_path / "one.png")
        plots.compare_curves({"a": _history(1), "b": _history(3)}, tmp_path / "cmp.png")
    finally:
        Figure.savefig = original
    assert seen[:2] == [[1.0], [1.0]]
    assert seen[2] == [1.0, 2.0, 3.0]


def test_evaluation_figures(tmp_path, mnist_eval):
    from digitlab.evaluate import write_figures

    figures = write_figures(mnist_eval["metrics"], tmp_path, mnist_eval["images"], mnist_eval["y"],
                            mnist_eval["probs"], prefix="val_")
    assert set(figures) == {"confusion_matrix", "confusion_matrix_normalized", "f1_per_class", "reliability",
                            "hardest_examples", "predictions"}
    for path in figures.values():
        assert path.name.startswith("val_")
        check_png(path, (500, 1400), (300, 1400))
