"""Export a run's model to ONNX or TorchScript, with its scaler inside the graph.

The exported graph takes what the training data looked like: float32 pixel values ``(N, H, W)``
in the dataset's own range (0..255 for MNIST and Fashion-MNIST, 0..16 for the 8x8 digits), the
batch size free. It applies the run's scaler (an affine map, so two constant tensors), runs the
model, and returns ``logits`` and ``probabilities`` (softmax). Files and photos still need
``digitlab.preprocess`` first, exactly as for the PyTorch model.

ONNX uses PyTorch's torch.export-based exporter (``dynamo=True``, the default since PyTorch 2.9;
it needs ``onnxscript``, a dependency of digitlab), falling back to the legacy TorchScript-based
exporter when onnxscript is missing. The ONNX file also carries the classes, threshold and
preprocessing target as metadata. TorchScript (``torch.jit.trace``) still works but PyTorch has
deprecated it; prefer ONNX or the safetensors weights with ``digitlab.runs.load_model``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from digitlab.errors import ConfigError, RunError
from digitlab.runs import MODEL_WEIGHTS, load_model, resolve_run
from digitlab.utils import atomic_write, atomic_write_bytes

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}


class ExportedModel(torch.nn.Module):
    """Raw pixels (N, H, W) -> (logits, probabilities), the run's scaler built in."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any]) -> None:
        from digitlab.data import Scaler

        super().__init__()
        self.model = model.eval()
        scaler = Scaler.from_dict(meta["scaler"])
        h, w = meta["spec"]["input_shape"][1:]
        # Every scaler is x * a + b (a and b scalars or per pixel): read them off two probe images.
        b = scaler.transform(torch.zeros(h, w))
        a = scaler.transform(torch.ones(h, w)) - b
        self.register_buffer("scale", a.float())
        self.register_buffer("shift", b.float())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(torch.addcmul(self.shift, images, self.scale).unsqueeze(1))
        return logits, torch.softmax(logits, dim=1)


def _example(meta: dict[str, Any]) -> torch.Tensor:
    h, w = meta["spec"]["input_shape"][1:]
    # Batch 2, not 1: torch.export specialises a batch of 1 into the graph.
    return torch.zeros(2, h, w)


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress and warn about torchvision ops; keep the CLI output clean."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def onnx_bytes(model: torch.nn.Module, meta: dict[str, Any]) -> bytes:
    """The serialized ONNX model (opset chosen by the exporter), dynamic batch axis, metadata set."""
    import onnx

    wrapper = ExportedModel(model.to("cpu"), meta).eval()
    x = _example(meta)
    with _quiet():
        try:
            import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)

            program = torch.onnx.export(
                wrapper, (x,), dynamo=True, input_names=["images"], output_names=["logits", "probabilities"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False,
            )
            proto = program.model_proto
        except ImportError:
            buf = io.BytesIO()
            torch.onnx.export(
                wrapper, (x,), buf, dynamo=False, input_names=["images"], output_names=["logits", "probabilities"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
            )
            proto = onnx.load_from_string(buf.getvalue())
    props = {
        "classes": json.dumps(list(meta["classes"])),
        "threshold": json.dumps(meta.get("threshold")),
        "preprocess_target": str(meta.get("preprocess", {}).get("target", "mnist")),
        "input": "float32 pixel values (N, H, W) in the training data's range; scaler inside the graph",
        "model": str(meta["spec"]["name"]),
    }
    onnx.helper.set_model_props(proto, props)
    return proto.SerializeToString()


def export_model(run: str | Path, format: str = "onnx", out: str | Path | None = None) -> Path:
    """Export ``run``'s model; default path RUN/model.onnx or RUN/model.pt. Returns the path written."""
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format '{format}'; choose onnx or torchscript.")
    path = resolve_run(run)
    model, meta = load_model(path)
    target = Path(out) if out is not None else path / FORMATS[fmt]
    if target.is_dir():
        target = target / FORMATS[fmt]
    if fmt == "onnx":
        atomic_write_bytes(target, onnx_bytes(model, meta))
    else:
        wrapper = ExportedModel(model.to("cpu"), meta).eval()
        with _quiet():
            traced = torch.jit.trace(wrapper, (_example(meta),))
            atomic_write(target, lambda p: torch.jit.save(traced, str(p)))
    return target


def onnx_session(model: torch.nn.Module, meta: dict[str, Any], run_dir: Path | None = None) -> Any:
    """An onnxruntime session for the model: RUN/model.onnx when it is newer than the weights,
    else a fresh export made in memory (nothing is written to the run folder)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
        raise ConfigError("The onnx runtime needs the onnxruntime package; pip install onnxruntime.") from exc
    data: bytes | None = None
    if run_dir is not None:
        onnx_file, weights = Path(run_dir) / FORMATS["onnx"], Path(run_dir) / MODEL_WEIGHTS
        if onnx_file.is_file() and weights.is_file() and onnx_file.stat().st_mtime >= weights.stat().st_mtime:
            data = onnx_file.read_bytes()
    if data is None:
        data = onnx_bytes(model, meta)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise RunError(
            f"The ONNX model of run '{run_dir}' cannot be loaded ({type(exc).__name__}); "
            "export it again with 'digitlab export RUN --format onnx'."
        ) from exc

