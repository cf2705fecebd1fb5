"""Batched augmentation: the left-right mirror of the fashion recipe, and its validation."""

from __future__ import annotations

import pytest
import torch

from digitlab.config import TrainConfig, validate
from digitlab.errors import ConfigError
from digitlab.training import augment_batch

_STILL = dict(aug_shift=0.0, aug_rotate=0.0, aug_scale=0.0, aug_shear=0.0)


def _bar(n: int) -> torch.Tensor:
    x = torch.zeros(n, 1, 6, 6)
    x[:, 0, :, 0] = 1.0  # a bar on the left edge: a mirror moves it to the right edge
    return x


def test_flip_always_mirrors_and_never_when_off() -> None:
    gen = torch.Generator().manual_seed(0)
    flipped = augment_batch(_bar(4), TrainConfig(aug_flip=1.0, **_STILL), gen)
    assert torch.allclose(flipped, torch.flip(_bar(4), dims=[3]), atol=1e-6)
    kept = augment_batch(_bar(4), TrainConfig(aug_flip=0.0, **_STILL), gen)
    assert torch.allclose(kept, _bar(4), atol=1e-6)


def test_flip_half_mirrors_about_half() -> None:
    out = augment_batch(_bar(2000), TrainConfig(aug_flip=0.5, **_STILL), torch.Generator().manual_seed(1))
    share = (out[:, 0, :, 5].mean(1) > 0.5).float().mean().item()
    assert 0.45 < share < 0.55


@pytest.mark.parametrize("name", ["aug_flip", "aug_morph"])
def test_probabilities_out_of_range_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=name.replace("_", "-")):
        validate(TrainConfig(**{name: 1.5}))


def test_pen_skip_cuts_one_thin_gap_and_nothing_else() -> None:
    ink = torch.full((64, 1, 28, 28), 255.0)
    # Same seed: the affine draws come first, so both calls see the same (identity) warp.
    out = augment_batch(ink, TrainConfig(aug_skip=1.0, **_STILL), torch.Generator().manual_seed(2))
    plain = augment_batch(ink, TrainConfig(aug_skip=0.0, **_STILL), torch.Generator().manual_seed(2))
    assert torch.allclose(plain, ink, atol=1e-3)
    cut = (out < 128).flatten(1).sum(1)
    changed = (out < plain - 1e-3).flatten(1).float().mean(1)
    # A ~2.4 px line across a 28x28 picture: always some pixels, at most a few rows' worth, and the
    # skip only ever removes ink.
    assert (cut > 0).all() and cut.max() <= 4 * 28
    assert changed.max() < 0.2 and (out <= plain + 1e-3).all()
