"""Checks of an experiment config before any work: each mistake is a one-line :class:`UserError`.

:func:`validate` is the first thing :func:`jaxforget.experiment.run` does, so that a misspelt
method, a missing path or a batch size that does not split over the devices is reported before
pretraining and embedding (minutes) rather than when the first batch is drawn.
"""

from __future__ import annotations

import os

import jax

from jaxforget import methods
from jaxforget.data.factory import DATA_HELP
from jaxforget.errors import UserError
from jaxforget.eval.sets import OTHER_IDENTITIES


def require_path(value: str, field: str, data_name: str) -> str:
    """``value`` of config ``field``, which must name an existing path of data set ``data_name``."""
    where = DATA_HELP.get(data_name, "")
    if not value:
        raise UserError(
            f"config field {field} is empty: set --config.{field}=/path/to/data ({where})."
        )
    if not os.path.exists(value):
        raise UserError(
            f"{field}={value!r} does not exist: set --config.{field} to the dataset"
            f" folder ({where})."
        )
    return value


def validate(cfg) -> None:
    try:
        methods.get_method(cfg.method.name)
    except (KeyError, ValueError) as e:
        raise UserError(e.args[0]) from e
    if cfg.method.name != cfg.config_method:
        raise UserError(
            f"method.name={cfg.method.name!r}, but this config holds the hyper-parameters of "
            f"{cfg.config_method!r} (learning rate, steps, data needs); use the config of "
            f"{cfg.method.name!r} instead (configs/{cfg.method.name}.py in this repository, or "
            f"jaxforget.config.method_config({cfg.method.name!r}, ...) in your own config file).")
    try:
        methods.resolve_hparams(cfg.method, methods.get_method(cfg.method.name))
    except ValueError as e:
        raise UserError(str(e)) from e
    if cfg.model.init and not os.path.exists(os.path.expanduser(cfg.model.init)):
        raise UserError(
            f"model.init={cfg.model.init!r} does not exist: give a checkpoint converted"
            " by tools/convert_insightface.py, an InsightFace .pth or a MobileFaceNet"
            " .ckpt (or leave it empty for random weights / config.pretrain)."
        )
    if cfg.data.name not in DATA_HELP:
        raise UserError(f"config field data.name={cfg.data.name!r} is not a known data set; use "
                        f"one of {', '.join(DATA_HELP)} ('folder': one sub-folder of "
                        "images per identity).")
    if cfg.data.name != "synthetic":
        require_path(cfg.data.root, "data.root", cfg.data.name)
    if (cfg.data.distractors and cfg.data.distractors != OTHER_IDENTITIES
            and not os.path.isdir(cfg.data.distractors)):
        raise UserError(
            f"data.distractors={cfg.data.distractors!r} is not a folder of images; give one, or "
            f"'{OTHER_IDENTITIES}' for the dataset's images of people outside the split."
        )
    _check_batch_sizes(cfg)


def _check_batch_sizes(cfg) -> None:
    """Batch sizes must be P x K and split evenly over the devices: checked before any work
    (pretraining and embedding take minutes) rather than when the first batch is drawn."""
    m = cfg.method
    method = methods.get_method(m.name)
    k = ("method.images_per_identity", int(m.images_per_identity))
    fields = {"forget": ("method.batch_size", int(m.batch_size)),
              "retain": ("method.retain_batch_size", int(m.get("retain_batch_size", m.batch_size)))}
    todo = [] if method.closed_form else [fields[key] + k for key in method.data_needs(m)]
    if int(cfg.pretrain.steps) > 0:
        todo.append(("pretrain.batch_size", int(cfg.pretrain.batch_size),
                     "pretrain.images_per_identity", int(cfg.pretrain.images_per_identity)))
    n = jax.device_count()
    for field, size, k_field, k_value in todo:
        if k_value < 1 or size % k_value:
            raise UserError(f"{field}={size} must be a multiple of {k_field}={k_value} (batches "
                            "are P identities x K images).")
        if size % n:
            raise UserError(f"{field}={size} is not divisible by the {n} devices of the "
                            f"data-parallel mesh; set it to a multiple of {n}.")
