"""Resumable checkpoints of a ``TrainState``: tensors in safetensors, the rest in JSON (no pickle).

Everything that decides the rest of a run is saved (weights, optimizer state, both random generators,
counters, history, early-stopping state), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from digitlab.errors import RunError
from digitlab.training.engine import TrainState
from digitlab.utils import atomic_write, atomic_write_json

Checkpoint = tuple[dict[str, torch.Tensor], dict[str, Any]]  # (tensors, JSON metadata)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{pid}/{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, pid, k = key.split("/", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split("/", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, state: TrainState, world_size: int = 1) -> None:
    """Write the resumable state to ``run_dir/checkpoint``: tensors, then the JSON that names the epoch.

    Both files are written atomically and both carry the epoch, so a crash between the two writes
    is detected (the epochs differ) instead of resuming from a mismatched pair.
    """
    ckpt = run_dir / "checkpoint"
    tensors = {f"model/{k}": v.detach().cpu().contiguous().clone() for k, v in state.model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(state.optimizer)
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    tensors["rng/gen"] = state.generator.get_state()
    if state.best_state is not None:
        tensors.update({f"best/{k}": v for k, v in state.best_state.items()})
    tensors["epoch_tag"] = torch.tensor([state.epoch])
    atomic_write(ckpt / "state.safetensors", lambda p: save_file(tensors, str(p)))
    atomic_write_json(
        ckpt / "state.json",
        {
            "epoch": state.epoch, "step": state.step, "train_seconds": state.train_seconds,
            "history": state.history, "optimizer": opt_meta, "best_score": state.best_score,
            "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
            "stopped_early": state.stopped_early, "world_size": world_size,
        },
    )


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The checkpoint's tensors and metadata; a ``RunError`` naming the problem if it is missing or torn."""
    ckpt = run_dir / "checkpoint"
    try:
        tensors = load_file(str(ckpt / "state.safetensors"))
        meta = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - missing, truncated or garbled files alike
        raise RunError(f"Run '{run_dir}' has no usable checkpoint ({exc.__class__.__name__}): start it anew.") from exc
    if int(tensors["epoch_tag"][0]) != meta["epoch"]:
        raise RunError(f"Run '{run_dir}' has a torn checkpoint (files of different epochs): start it anew.")
    return tensors, meta


def restore(state: TrainState, checkpoint: Checkpoint) -> None:
    """Put a loaded checkpoint into a fresh ``state`` (same config and model), random generators included."""
    tensors, meta = checkpoint
    state.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    state.optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    torch.set_rng_state(tensors["rng/torch"])
    state.generator.set_state(tensors["rng/gen"])
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
    state.best_state = best or None
    state.epoch, state.step, state.train_seconds = meta["epoch"], meta["step"], meta["train_seconds"]
    state.history, state.best_score, state.best_epoch = meta["history"], meta["best_score"], meta["best_epoch"]
    state.bad_epochs, state.stopped_early = meta["bad_epochs"], meta["stopped_early"]
