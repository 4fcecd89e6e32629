"""A run's hyper-parameters: every ``method.*`` config field, its default and its checks.

:class:`HParams` is the one place that lists what a method can be configured with;
:func:`resolve_hparams` reads it from a config. The allowed values of the enumerated fields are
the module constants below.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear", "step")
BN_MODES = ("train", "frozen", "batch")
RETAIN_LOSSES = ("cosface", "distill")
VIEW_POSITIVES = ("identity", "image")


@dataclasses.dataclass(frozen=True)
class HParams:
    """Every ``method.*`` config field a method reads, with its library-wide default.

    Fields absent from the config take these values; each ``configs/<method>.py`` writes the values
    its method runs with. Paper values are used where the paper gives them; other values are
    project choices.
    """

    # Optimiser and schedule.
    optimizer: str = "sgd"            # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9             # sgd only; 0 disables the momentum buffer
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "constant"        # constant | cosine | linear | step
    warmup_steps: int = 0
    steps: int = 1000                 # schedule length (paper: 1,000 iterations)
    step_boundaries: tuple[float, ...] = (0.5, 0.75)   # 'step': fractions of `steps`
    step_factor: float = 0.1          # 'step': lr multiplier at each boundary
    clip_norm: float = 0.0            # 0: no clipping
    # Model behaviour.
    bn_mode: str = "train"            # train | frozen | batch (optim.py says what each does)
    flip: bool = True                 # random horizontal flip on device (paper's only augmentation)
    # Dispersion.
    margin: float = 0.0               # m_d (paper's value lost; 0 = push positives to orthogonal)
    augmented_views: bool = False     # disp / hard_disp over augmented views (beyond the paper)
    num_views: int = 2
    view_positives: str = "identity"  # identity | image (see losses.multiview_dispersion_loss)
    view_crop: float = 0.1            # max translation of a view, as a fraction of the image side
    view_jitter: float = 0.2          # brightness / contrast jitter strength of a view
    # Retain term, added to any method's loss (finetune / retrain / contrastive use retain CosFace
    # as their own loss instead).
    retain_weight: float = 0.0        # lambda; 0: no retain data needed
    retain_loss: str = "cosface"      # cosface (CosFace on retain) | distill (to frozen original)
    # What trains (beyond the paper): '' = the whole backbone; else a regular expression searched
    # in each '/'-joined parameter / BatchNorm-statistic path (see trainable_mask).
    trainable: str = ""
    # SalUn.
    salun_fraction: float = 0.0       # 0: off; else keep this top fraction of weight elements
    # Identity-subspace projection (see ``projection.py``): remove the forget identities' centroid
    # directions from the embedding before training (always on for the closed-form ``project``).
    # The map is exact for eval-mode BatchNorm; training with bn_mode='train' normalises the last
    # layer by batch statistics, which partly undoes it during training.
    project: bool = False
    # Baselines.
    rl_exclude_true: bool = False     # RL: draw random labels among the other C-1 classes
    bs_eps: float = 4.0 / 255.0       # BS: FGSM step, normalised-pixel units (~2 grey levels)
    lipschitz_sigma: float = 0.1      # LU: noise std, normalised-pixel units
    lipschitz_draws: int = 4          # LU: noise draws per image
    contrastive_temperature: float = 0.1  # CU: softmax temperature

    def __post_init__(self):
        def bad(field, value, allowed):
            return ValueError(f"config method.{field}={value!r} is not supported; use one of "
                              f"{allowed}.")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise bad("schedule", self.schedule, SCHEDULES)
        if self.bn_mode not in BN_MODES:
            raise bad("bn_mode", self.bn_mode, BN_MODES)
        if self.retain_loss not in RETAIN_LOSSES:
            raise bad("retain_loss", self.retain_loss, RETAIN_LOSSES)
        if self.view_positives not in VIEW_POSITIVES:
            raise bad("view_positives", self.view_positives, VIEW_POSITIVES)
        try:
            re.compile(self.trainable)
        except re.error as e:
            raise ValueError(f"config method.trainable={self.trainable!r} is not a valid regular "
                             f"expression ({e}); use e.g. 'linear1/' or '' (whole backbone).")
        checks = [
            ("lr", self.lr >= 0, ">= 0"), ("steps", self.steps >= 1, ">= 1"),
            ("warmup_steps", 0 <= self.warmup_steps, ">= 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("clip_norm", self.clip_norm >= 0, ">= 0 (0 disables clipping)"),
            ("salun_fraction", 0.0 <= self.salun_fraction <= 1.0, "in [0, 1] (0 disables)"),
            ("retain_weight", self.retain_weight >= 0, ">= 0"),
            ("num_views", self.num_views >= 2, ">= 2"),
            ("lipschitz_draws", self.lipschitz_draws >= 1, ">= 1"),
            ("lipschitz_sigma", self.lipschitz_sigma > 0, "> 0"),
            ("contrastive_temperature", self.contrastive_temperature > 0, "> 0"),
            ("bs_eps", self.bs_eps >= 0, ">= 0"),
        ]
        for field, ok, rule in checks:
            if not ok:
                raise ValueError(f"config method.{field}={getattr(self, field)!r} must be {rule}.")


_HPARAM_FIELDS = {f.name: f for f in dataclasses.fields(HParams)}


def _cfg_get(cfg: Any, key: str) -> tuple[bool, Any]:
    if cfg is None:
        return False, None
    try:
        if key in cfg:
            return True, cfg[key]
    except TypeError:
        pass
    if hasattr(cfg, key) and not isinstance(cfg, Mapping):
        return True, getattr(cfg, key)
    return False, None


def resolve_hparams(method_cfg: Any, method: Any = None) -> HParams:
    """:class:`HParams` from a config (ConfigDict, dict, dataclass, an :class:`HParams` or None).

    Unknown config fields are ignored (the runner's ``config.method`` also holds data fields such
    as ``batch_size``); known ones are converted to the field's type; absent ones keep the
    :class:`HParams` default. Resolving an :class:`HParams` gives an equal one. ``method`` (a
    :class:`~jaxforget.methods.record.Method`, optional) adds the check that ``retain_loss`` is
    only changed for methods with the generic retain term.
    """
    values = {}
    for name in _HPARAM_FIELDS:
        found, value = _cfg_get(method_cfg, name)
        if found and value is not None:
            values[name] = value
    out = {}
    for name, value in values.items():
        default = _HPARAM_FIELDS[name].default
        try:
            if isinstance(default, bool):
                out[name] = bool(value)
            elif isinstance(default, int):
                if float(value) != int(value):
                    raise ValueError
                out[name] = int(value)
            elif isinstance(default, float):
                out[name] = float(value)
            elif isinstance(default, tuple):
                out[name] = tuple(float(v) for v in value)
            else:
                out[name] = str(value)
        except (TypeError, ValueError):
            raise ValueError(f"config method.{name}={value!r}: expected a "
                             f"{type(default).__name__} like {default!r}.") from None
    hp = HParams(**out)
    if method is not None and not method.generic_retain and hp.retain_loss != "cosface":
        raise ValueError(f"config method.retain_loss={hp.retain_loss!r}: method {method.name!r} "
                         "has its own retain term (CosFace on retain samples); retain_loss "
                         "applies to the methods with the generic retain term.")
    return hp
