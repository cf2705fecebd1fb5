"""Data-parallel training with ``torch.distributed``: the process group, rank helpers, sharding.

digitlab does not launch or place processes itself: ``torchrun`` does (one machine or several,
with its rendezvous), and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``
for each process. ``train()`` joins the group that environment describes (gloo for CPU tensors,
plus NCCL for CUDA tensors when there is a GPU), wraps the model in DistributedDataParallel and
uses the helpers below; a single process sees a world of one and every helper is a no-op.

The rules, documented in docs/distributed.md:

- ``batch_size`` is per process: the global batch is ``batch_size x world_size``, and the learning
  rate is multiplied by ``lr_factor(config.lr_scaling, world_size)`` (linear by default, Goyal et
  al. 2017; ``sqrt`` or ``none`` on request).
- Every rank draws the same epoch permutation (same seed) and keeps every ``world_size``-th index
  from its rank on, padded so that all shards, and so all step counts, are equal.
- Augmentation and dropout draw from per-rank, per-epoch seeds, so ranks see different
  transformations and a resumed run repeats exactly.
- Rank 0 alone opens or resumes the run folder (and sends the result to the others) and writes
  config, history, checkpoints, metrics and the report.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from digitlab.config import LR_SCALINGS
from digitlab.errors import ConfigError, DigitlabError, TrainingError

T = TypeVar("T")


# --- who am I ------------------------------------------------------------------------------------


def launched() -> bool:
    """Whether this process is one of several started by torchrun (or another launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def enabled() -> bool:
    """Whether a process group of more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if enabled() else 0


def backend() -> str | None:
    return str(dist.get_backend()) if enabled() else None


# --- the process group ---------------------------------------------------------------------------


@contextmanager
def session() -> Iterator[None]:
    """Join the process group that torchrun's environment describes, and leave it at the end.

    A no-op for a single process, or when the caller already made the group (then it keeps it).
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise ConfigError("This torch build has no torch.distributed: install a build with it, or run one process.")
    # One group, two transports: gloo for CPU tensors (and the small control messages), NCCL for CUDA tensors.
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """The device of this process: with several processes each takes its own GPU (``cuda:LOCAL_RANK``)."""
    if not enabled():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
        return device
    if device.type != "cpu":
        raise ConfigError(f"Data-parallel training runs on CPUs (gloo) or CUDA GPUs (NCCL), not on '{device}': "
                          "pass --device cpu or --device cuda.")
    return device


def threads_per_process() -> int | None:
    """CPU threads for each of several processes on one machine: its cores shared out (None: one process)."""
    if not enabled():
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model in DistributedDataParallel (which averages gradients across ranks), or itself."""
    if not enabled():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def lr_factor(scaling: str, world: int | None = None) -> float:
    """How much the learning rate grows with the global batch (``batch_size x world``)."""
    world = world_size() if world is None else world
    if scaling == "linear":
        return float(world)
    if scaling == "sqrt":
        return math.sqrt(world)
    if scaling == "none":
        return 1.0
    raise ConfigError(f"Unknown lr scaling '{scaling}': choose one of {', '.join(LR_SCALINGS)}.")


# --- data ----------------------------------------------------------------------------------------


def shard_size(n: int) -> int:
    """Items per rank of an epoch of ``n`` items (all ranks equal, so they take the same number of steps)."""
    return math.ceil(n / world_size())


def shard(perm: torch.Tensor) -> torch.Tensor:
    """This rank's part of an epoch's permutation: every ``world``-th index from ``rank`` on.

    As torch's DistributedSampler, the permutation is first padded with its own head to a multiple
    of the world size, so every rank gets ``shard_size(n)`` items and a few repeat once per epoch.
    """
    world = world_size()
    if world == 1:
        return perm
    pad = shard_size(len(perm)) * world - len(perm)
    if pad:
        perm = torch.cat([perm, perm[:pad]])
    return perm[rank()::world]


def epoch_generator(gen: torch.Generator, seed: int, epoch: int) -> torch.Generator:
    """The generator for this epoch's augmentation, and a fresh global seed for dropout.

    A single process keeps drawing from ``gen`` (its history stays as it always was). With several,
    ranks share ``gen`` for the permutation but must not transform their images alike: each gets a
    seed from (seed, epoch, rank), so a resumed epoch draws the same numbers again.
    """
    if not enabled():
        return gen
    s = int(np.random.SeedSequence([seed, epoch, rank()]).generate_state(1)[0])
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


# --- communication -------------------------------------------------------------------------------


def sum_all(*values: torch.Tensor | float) -> list[float]:
    """Sums over all ranks of a few numbers (e.g. a loss sum, a count of correct answers, images seen)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if enabled():
        dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any one (e.g. a callback asking to stop)."""
    if not enabled():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def map_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` with the rows of ``x`` split over the ranks: each computes a contiguous chunk and all
    gather the result, so every rank ends with the same full output (e.g. validation probabilities).
    """
    world = world_size()
    if world == 1 or len(x) == 0:
        return fn(x)
    chunk = math.ceil(len(x) / world)
    part = x[rank() * chunk : (rank() + 1) * chunk]
    if len(part) < chunk:  # the last ranks' chunks are padded with rows they then drop
        part = torch.cat([part, x[: chunk - len(part)]])
    out = fn(part).contiguous()
    parts = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(parts, out)
    return torch.cat(parts)[: len(x)]


def from_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result (or its user error) to every rank."""
    if not enabled():
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box = [("ok", fn())]
        except DigitlabError as exc:
            box = [("error", exc)]
        except Exception as exc:
            dist.broadcast_object_list([("error", TrainingError(f"Rank 0 failed: {exc!r}."))], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def barrier() -> None:
    if enabled():
        dist.barrier()


# --- one machine, several processes: `digitlab train --nproc N` ----------------------------------


def launch_local(nproc: int, args: list[str]) -> None:
    """Run ``digitlab ARGS`` in ``nproc`` processes on this machine through torchrun and wait for them."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "digitlab", *args]
    env = dict(os.environ)
    # torchrun would set 1 thread per process and warn about it; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # The workers import this very digitlab, installed or not (e.g. a notebook next to a checkout).
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if rc != 0:
        raise TrainingError(
            f"The {nproc} training processes stopped with exit code {rc} (their messages are above): fix the cause "
            "and continue with --resume RUN, or run with --nproc 1."
        )
