"""The example notebooks run top to bottom (quick mode), are committed without outputs, and the
Jupyter displays of a Run, a model summary and the training progress work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from digitlab.models import build_model, format_summary
from digitlab.runs import Run
from digitlab.training import Reporter

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("[0-9][0-9]_*.ipynb"))
KERNEL = "digitlab-tests"  # a kernelspec written per test, so the kernel is this interpreter (the venv's)


def test_five_notebooks_in_lesson_order() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "a notebook without code"
    for cell in code:
        assert cell["outputs"] == [], f"{path.name}: a cell has stale outputs; strip them (examples/_build.py)"
        assert cell["execution_count"] is None, f"{path.name}: a cell has an execution count"


def test_notebooks_match_their_generator(tmp_path: Path) -> None:
    """examples/_build.py writes the notebooks: the committed files are what it makes now."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("examples_build", EXAMPLES / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.HERE = tmp_path
    build.main()
    for path in NOTEBOOKS:
        assert (tmp_path / path.name).read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{path.name} differs from what examples/_build.py writes: run it again")


def _kernel_manager(tmp_path: Path):  # noqa: ANN202
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "digitlab tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


@pytest.mark.xdist_group("notebooks")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Execute every cell in quick mode; an exception in any cell fails the test."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("DIGITLAB_QUICK", "1")
    monkeypatch.setenv("DIGITLAB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebooks draw inline
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, km=_kernel_manager(tmp_path),
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no inline picture"
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "lesson:" in text and "digitlab:" in text, "no line comparing the lesson's number with ours"
    assert "ipywidgets" not in text  # rich's live display would warn and show nothing
    html = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs)
    if "train(" in "".join(c.source for c in nb.cells):
        assert "train loss" in html, "the training progress did not render as HTML"
    assert (tmp_path / "runs").is_dir()


# --- Jupyter displays -------------------------------------------------------------------------------


def test_model_summary_is_text_and_html() -> None:
    summary = format_summary(build_model("mlp", hidden=[36]))
    assert isinstance(summary, str) and "Total params: 28,630" in summary  # the text stays as it was
    html = summary._repr_html_()
    assert html.count("<tr>") == len(summary.rows) + 1 and "28,260" in html and "<b>28,630</b>" in html
    assert summary.total == summary.trainable == 28630


def _fake_run(tmp_path: Path, epochs: int) -> Run:
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.9 + e / 100, "val_loss": 1.1 / e,
                "val_acc": 0.88 + e / 100, "lr": 1e-3, "seconds": 1.0} for e in range(1, epochs + 1)]
    metrics = {"train_seconds": 3.5, "train": {"accuracy": 0.93, "loss": 0.2, "size": 100},
               "val": {"accuracy": 0.9, "loss": 0.3, "size": 50}, "test": {"accuracy": 0.875, "loss": 0.35, "size": 40}}
    config = {"model": "mlp", "model_options": {"hidden": [36]}, "dataset": "mnist", "split": "default",
              "recipe": "<script>", "optimizer": "adam", "lr": 0.001, "batch_size": 64, "epochs": 5}
    return Run(path=tmp_path / "run-x", config=config, history=history, metrics=metrics)


def test_run_html_has_metrics_and_curves(tmp_path: Path) -> None:
    html = _fake_run(tmp_path, 3)._repr_html_()
    for expected in ("93.00%", "90.00%", "87.50%", "run-x", "hidden=[36]", "3 of 5", "3.5 s"):
        assert expected in html
    assert "&lt;script&gt;" in html and "<script>" not in html  # values are escaped
    assert html.count("data:image/png;base64,") == 1


def test_run_html_without_curves_or_metrics(tmp_path: Path) -> None:
    one = _fake_run(tmp_path, 1)
    assert "data:image/png" not in one._repr_html_()  # a single epoch has no curve
    empty = Run(path=tmp_path / "empty")
    assert "no metrics yet" in empty._repr_html_()


def test_reporter_notebook_mode_renders_bar_and_table(capsys: pytest.CaptureFixture) -> None:
    assert Reporter.in_notebook() is False
    assert Reporter("auto").mode == "rich" and Reporter("rich").mode == "rich"
    rep = Reporter("notebook")
    rep.message("mnist: 100 train images")
    with rep.epoch_bar(1, 2, 4) as advance:
        advance(0.5)
        advance(0.4)
        mid = rep._render()
    assert '<progress value="0.5000"' in mid["text/html"] and "epoch 1/2  2/4  loss 0.4000" in mid["text/plain"]
    rep.epoch_end({"epoch": 1, "train_loss": 0.45, "train_acc": 0.8, "val_loss": float("nan"),
                   "val_acc": float("nan"), "lr": 0.01, "seconds": 1.5}, 2)
    done = rep._render()
    assert "<progress" not in done["text/html"]  # the bar goes away with the epoch, as rich's
    assert "train loss" in done["text/html"] and "0.4500" in done["text/html"] and "80.00%" in done["text/html"]
    assert "val loss" not in done["text/html"]  # no validation set: no empty columns
    assert "mnist: 100 train images" in done["text/plain"]
