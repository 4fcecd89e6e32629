"""Checks of an experiment config before any work: each mistake is a one-line :class:`UserError`.

:func:`validate` is the first thing :func:`jaxforget.experiment.run` does, so that a misspelt
method, a missing path or a batch size that does not split over the devices is reported before
pretraining and embedding (minutes) rather than when the first batch is drawn.
"""

from __future__ import annotations

import copy
import importlib.util
import os

import jax

from jaxforget import methods
from jaxforget.data.factory import DATA_HELP
from jaxforget.errors import UserError
from jaxforget.eval.sets import (
    OTHER_IDENTITIES,
    SET_BUILDERS,
    distractor_spec,
    needed_sets,
    pack_name,
    set_builders,
)
from jaxforget.models import loading
from jaxforget.models.folded_bn import FOLDED_BN_MODES


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


def validate(cfg):
    """Checks ``cfg`` before any work; returns it with the model fields resolved
    (:func:`resolve_model`). Each mistake is a one-line :class:`UserError`."""
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
    steps = 0 if methods.get_method(cfg.method.name).closed_form else int(cfg.method.steps)
    bad = [s for s in cfg.train.get("curve_steps", ()) if not (isinstance(s, int) and 0 < s < steps)]
    if bad:
        raise UserError(f"train.curve_steps={tuple(cfg.train.curve_steps)}: {bad[0]!r} is not a step "
                        f"between 1 and method.steps - 1 = {steps - 1} (the Original is step 0 and "
                        "the unlearned model the last step; both are always evaluated).")
    if int(cfg.get("base_seed", -1)) < -1:
        raise UserError(f"base_seed={cfg.base_seed}: use a seed >= 0 (one base model for every seed) "
                        "or -1 (the run's seed: a base model per seed).")
    if cfg.model.init and not os.path.exists(os.path.expanduser(cfg.model.init)):
        raise UserError(
            f"model.init={cfg.model.init!r} does not exist: give a checkpoint converted"
            " by tools/convert_insightface.py, an InsightFace .pth or .onnx or a MobileFaceNet"
            " .ckpt (or leave it empty for random weights / config.pretrain)."
        )
    if cfg.model.get("folded_bn", "recalibrate") not in FOLDED_BN_MODES:
        raise UserError(f"model.folded_bn={cfg.model.folded_bn!r}: use one of "
                        f"{', '.join(repr(m) for m in FOLDED_BN_MODES)}")
    if cfg.get("export_onnx") and importlib.util.find_spec("onnx") is None:  # used at the run's end
        raise UserError("export_onnx=True needs the optional package onnx: pip install "
                        "'jaxforget[onnx]', or drop --config.export_onnx.")
    cfg = resolve_model(cfg)
    if cfg.data.name not in DATA_HELP:
        raise UserError(f"config field data.name={cfg.data.name!r} is not a known data set; use "
                        f"one of {', '.join(DATA_HELP)} ('folder': one sub-folder of "
                        "images per identity).")
    if cfg.data.name != "synthetic":
        require_path(cfg.data.root, "data.root", cfg.data.name)
    kind, path = distractor_spec(cfg.data.distractors)
    if kind not in ("", OTHER_IDENTITIES) and not os.path.isdir(path):
        raise UserError(
            f"data.distractors={cfg.data.distractors!r}: {path!r} is not a folder of images; give "
            f"one, '<data name>:<root>' (e.g. 'celeba:/data/celeba') for another data set's "
            f"people outside this one, or '{OTHER_IDENTITIES}' for the dataset's images of people "
            f"outside the split."
        )
    _check_verification_bins(cfg)
    builders = set_builders(cfg)
    for name in needed_sets(tuple(cfg.evals), builders):
        for field in builders[name].paths:
            block, key = field.split(".")
            value = cfg[block][key]
            if not value or not os.path.exists(value):
                raise UserError(
                    f"config field {field}={value!r} {'is empty' if not value else 'does not exist'}"
                    f": the protocols in evals read {builders[name].doc}; set "
                    f"--config.{field}=<folder>, or drop those protocols from evals.")
    _check_batch_sizes(cfg)
    return cfg


def _check_verification_bins(cfg) -> None:
    """Each pack of ``data.verification_bins`` is a file, named by a stem no other set has."""
    seen: dict[str, str] = {}
    for path in cfg.data.verification_bins:
        name = pack_name(path)
        if not os.path.isfile(path):
            raise UserError(f"data.verification_bins: {path!r} is not a file; give InsightFace "
                            "verification packs (lfw.bin, cfp_fp.bin, agedb_30.bin).")
        if name in seen or name in SET_BUILDERS or f"{name}_images" in SET_BUILDERS:
            other = repr(seen[name]) if name in seen else "a set of the runner"
            raise UserError(f"data.verification_bins: {path!r} is named {name!r} (its file stem) "
                            f"like {other}; rename the file.")
        seen[name] = path


def resolve_model(cfg):
    """A copy of ``cfg`` whose ``model`` fields are the model that will be built: what
    ``model.init`` fixes (architecture, width, input size, embedding size) fills the fields the
    config leaves unset, read from the checkpoint without building the model
    (:func:`jaxforget.models.loading.model_config`); a set field that disagrees is refused."""
    try:
        resolved = loading.model_config(cfg.model)
    except loading.ModelConfigError as e:
        raise UserError(str(e)) from e
    except (FileNotFoundError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"model.init={cfg.model.init!r}: {'; '.join(lines)}") from e
    out = copy.deepcopy(cfg)
    for key in loading.FIXED_FIELDS:
        out.model[key] = resolved[key]
    return out


def fit_batch(field: str, batch_size: int, k: int, identities: int) -> int:
    """The size of a P x K batch (``field``: ``batch_size`` = P x ``k``) drawn from
    ``identities`` identities: ``batch_size`` when they are at least P, else P = ``identities``
    (K kept), lowered until the batch splits over the devices. A :class:`UserError` when no
    batch fits."""
    p, n = batch_size // k, jax.device_count()
    if identities >= p:
        return batch_size
    for q in range(identities, 0, -1):
        if (q * k) % n == 0:
            return q * k
    raise UserError(
        f"{field}={batch_size} draws P={p} identities x K={k} images, but there are only "
        f"{identities} identities to draw from and no smaller P x {k} batch splits over the {n} "
        f"devices; add identities or set {field} to P x {k} with P <= {identities}.")


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
    # The forget set's identities are known now: a batch they cannot fill is fitted (P = their
    # number, by the runner, which says so) or refused here, before any work.
    if not method.closed_form and "forget" in method.data_needs(m):
        fit_batch("method.batch_size", int(m.batch_size), int(m.images_per_identity),
                  len(cfg.forget.identities) or int(cfg.forget.num_identities))
