"""Training: ``train(config) -> Run`` (also ``digitlab.train``) and the pieces it is made of.

- ``engine``: data in memory (``prepare_data``, ``TrainData``), ``build`` the model, and
  ``fit(model, data, config, hooks) -> TrainState``: the loop, with no run folder and no screen.
- ``optim``: optimizers and learning-rate schedules (pure functions of the step).
- ``augment``: batched augmentation, one function ``(x, config, generator) -> x`` per transform.
- ``checkpoint``: a ``TrainState`` to safetensors + JSON and back (exact resume).
- ``progress``: the one ``Reporter`` of training, the studies and tune (rich, notebook, JSON, quiet).
- ``run``: the run folder around ``fit``: resume, torchrun launch, the screen, final metrics and report.

The package is not named ``train`` so that the package attribute ``digitlab.train`` stays the function.
"""

from digitlab.config import (
    INITS,
    MONITORS,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
    TrainConfig,
    load_config_file,
    recipe_config,
    validate,
)
from digitlab.training.augment import TRANSFORMS, augment_batch
from digitlab.training.checkpoint import load_checkpoint, restore, save_checkpoint
from digitlab.training.engine import (
    Callback,
    Hooks,
    TrainData,
    TrainState,
    build,
    data_key,
    fit,
    loss_acc,
    predict_proba,
    prepare_data,
    setup,
)
from digitlab.training.optim import lr_at, make_optimizer, use_bf16
from digitlab.training.progress import ProgressMode, Reporter
from digitlab.training.run import finish, new_run_dir, open_run, preprocess_target, train

__all__ = [
    "Callback", "Hooks", "INITS", "MONITORS", "OPTIMIZERS", "ProgressMode", "RECIPES", "Reporter", "SCHEDULES",
    "TRANSFORMS", "TrainConfig", "TrainData", "TrainState", "augment_batch", "build", "data_key", "finish", "fit",
    "load_checkpoint", "load_config_file", "loss_acc", "lr_at", "make_optimizer", "new_run_dir", "open_run",
    "predict_proba", "prepare_data", "preprocess_target", "recipe_config", "restore", "save_checkpoint", "setup",
    "train", "use_bf16", "validate",
]
