"""Optimizers and learning-rate schedules. A schedule is a pure function of the step, so a checkpoint
needs only the step count to resume it exactly."""

from __future__ import annotations

import math
from typing import Any

import torch

from digitlab.config import TrainConfig
from digitlab.errors import ConfigError


def make_optimizer(config: TrainConfig, params: Any) -> torch.optim.Optimizer:
    """The torch optimizer named by ``config.optimizer`` with its learning rate, momentum and decay."""
    o, lr, wd = config.optimizer, config.lr, config.weight_decay
    if o == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if o == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    if o == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=True, weight_decay=wd)
    if o == "adam":
        return torch.optim.Adam(params, lr=lr, betas=config.betas, weight_decay=wd)
    if o == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=config.betas, weight_decay=wd)
    if o == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=config.rho, weight_decay=wd)
    if o == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=config.rho, weight_decay=wd)
    raise ConfigError(f"Unknown optimizer '{o}'.")


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): warm-up, then the schedule."""
    total = config.epochs * steps_per_epoch
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    base = config.lr
    if config.schedule == "one-cycle":
        # As torch's OneCycleLR: from lr/25 up to lr over the warm-up (default 25% of training),
        # then cosine down to lr/1e4.
        up = warm if warm > 0 else max(1, int(0.25 * total))
        if step < up:
            return base / 25 + (base - base / 25) * step / up
        t = min(1.0, (step - up) / max(1, total - up))
        low = base / 1e4
        return low + (base - low) * 0.5 * (1 + math.cos(math.pi * t))
    if step < warm:
        return base * (step + 1) / warm
    if config.schedule == "constant":
        return base
    if config.schedule == "step":
        return base * config.gamma ** ((step // steps_per_epoch) // max(1, config.step_size))
    if config.schedule == "cosine":
        t = min(1.0, (step - warm) / max(1, total - warm))
        return base * 0.5 * (1 + math.cos(math.pi * t))
    raise ConfigError(f"Unknown schedule '{config.schedule}'.")


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train in bf16 autocast: always for 'bf16', never for 'fp32'; 'auto' only where it is fast
    (a CPU with native bf16 such as AVX512-BF16 or AMX, or a CUDA GPU that supports it)."""
    if precision == "bf16":
        return True
    if precision != "auto":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        native = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
            cpu, "_is_amx_tile_supported", lambda: False
        )()
        return bool(native and torch.backends.mkldnn.is_available())
    return False
