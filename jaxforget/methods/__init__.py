"""Unlearning methods chosen by name: ``get_method(config.method.name)``.

Every method trains the whole backbone, or only the parameters whose path matches the regular
expression ``method.trainable`` (e.g. ``'linear1/'``, MobileFaceNet's output layer); BatchNorm
statistics follow ``method.bn_mode``; the CosFace head is frozen except in ``finetune`` and
``retrain``. See :mod:`jaxforget.methods.base` for the
state, the optax chain and the update step, and :mod:`jaxforget.methods.saliency` for SalUn.

Config fields (``config.method.*``, all in :class:`HParams`). Every method reads the optimiser
fields ``optimizer lr momentum nesterov weight_decay schedule warmup_steps steps step_boundaries
step_factor clip_norm``, ``bn_mode``, ``trainable``, ``flip``, ``salun_fraction`` and (except
finetune, retrain, contrastive) the generic retain term ``retain_weight retain_loss``. Method-specific fields:

=============== ========================== =========================================================
name            data (``data_needs``)      own fields (method defaults)
=============== ========================== =========================================================
finetune        retain (all train ids)     trains head; lr=0.01, schedule=linear
retrain         retain                     trains head; lr=0.01, schedule=linear
disp            forget                     margin; augmented_views num_views view_positives ...
hard_disp       forget                     margin; augmented_views num_views view_positives ...
disp_aug        forget                     margin num_views view_positives view_crop view_jitter
hard_disp_aug   forget                     margin num_views view_positives view_crop view_jitter
rl              forget (+retain if lambda) rl_exclude_true; retain_weight=1.0
ga              forget                     lr=1e-4
bs              forget                     bs_eps; lr=1e-4; uses the frozen original
lipschitz       forget + retain            lipschitz_draws lipschitz_sigma; retain_weight=1.0,
                                           salun_fraction=0.5
contrastive     forget + retain            contrastive_temperature retain_weight(=1.0, CosFace)
project         none (closed form)         no training: removes the forget identities' centroid
                                           directions from the embedding (``projection.py``)
=============== ========================== =========================================================

``project=True`` on any trained method applies the same projection before its training.
"""

from __future__ import annotations

from jaxforget.methods.base import (
    Context,
    Forward,
    HParams,
    Method,
    TrainState,
    init_state,
    make_optimizer,
    make_schedule,
    make_update_step,
    normalize_images,
    resolve_hparams,
    trainable_mask,
    trainable_tree,
)
from jaxforget.methods.classification import (
    BOUNDARY_SHRINK,
    FINETUNE,
    GRADIENT_ASCENT,
    RANDOM_LABELING,
    RETRAIN,
)
from jaxforget.methods.contrastive import CONTRASTIVE
from jaxforget.methods.dispersion import (
    DISPERSION,
    DISPERSION_AUG,
    HARD_DISPERSION,
    HARD_DISPERSION_AUG,
    augment_views,
)
from jaxforget.methods.lipschitz import LIPSCHITZ
from jaxforget.methods.projection import PROJECT
from jaxforget.methods.saliency import (
    compute_saliency_mask,
    get_saliency_mask,
    saliency_mask_transform,
    set_saliency_mask,
    top_fraction_mask,
)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (FINETUNE, RETRAIN, DISPERSION, HARD_DISPERSION, DISPERSION_AUG, HARD_DISPERSION_AUG,
              RANDOM_LABELING, GRADIENT_ASCENT, BOUNDARY_SHRINK, LIPSCHITZ, CONTRASTIVE, PROJECT)
}


def get_method(name: str) -> Method:
    """The method registered under ``name`` (``config.method.name``)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (config field method.name); known methods: "
                         f"{', '.join(sorted(METHODS))}.") from None


__all__ = [
    "METHODS", "Context", "Forward", "HParams", "Method", "TrainState", "augment_views",
    "compute_saliency_mask", "get_method", "get_saliency_mask", "init_state", "make_optimizer",
    "make_schedule", "make_update_step", "normalize_images", "resolve_hparams",
    "saliency_mask_transform", "set_saliency_mask", "top_fraction_mask", "trainable_mask",
    "trainable_tree",
]
