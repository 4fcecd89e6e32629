"""Unlearning methods chosen by name: ``get_method(config.method.name)``.

Every method trains the whole backbone, or only the parameters whose path matches the regular
expression ``method.trainable`` (e.g. ``'linear1/'``, MobileFaceNet's output layer); BatchNorm
statistics follow ``method.bn_mode``; the CosFace head is frozen except in ``finetune`` and
``retrain``. The modules, one concern each: ``hparams`` (every config field and its
default), ``record`` (the :class:`Method` record), ``state`` (train state, context,
``init_state``), ``optim`` (schedule, optax chain, trainable masks, SalUn's mask transform),
``step`` (forward passes, ``make_update_step``), ``saliency`` (SalUn's ranking), ``registry``
(``get_method``), and one file per method (``dispersion.py`` holds the four dispersion variants,
which share one loss; ``finetune.py`` holds ``finetune`` and ``retrain``). A whole run (state,
SalUn, jit, loop) is :func:`jaxforget.trainer.unlearn`.

Config fields (``config.method.*``, all in :class:`HParams`, which holds the library-wide
defaults; the values each method runs with are written in ``configs/<method>.py``). Every method
reads the optimiser fields ``optimizer lr momentum nesterov weight_decay schedule warmup_steps
steps step_boundaries step_factor clip_norm``, ``bn_mode``, ``trainable``, ``flip``,
``salun_fraction`` and (except finetune, retrain, contrastive) the generic retain term
``retain_weight retain_loss``. Method-specific fields:

=============== ========================== =========================================================
name            data (``data_needs``)      own fields (what the method's config sets)
=============== ========================== =========================================================
finetune        retain (all train ids)     trains head; lr, schedule
retrain         retain                     trains head; lr, schedule
disp            forget                     margin; augmented_views num_views view_positives ...
hard_disp       forget                     margin; augmented_views num_views view_positives ...
disp_aug        forget                     margin num_views view_positives view_crop view_jitter
hard_disp_aug   forget                     margin num_views view_positives view_crop view_jitter
rl              forget (+retain if lambda) rl_exclude_true; retain_weight
ga              forget                     lr
bs              forget                     bs_eps; lr; uses the frozen original
lipschitz       forget + retain            lipschitz_draws lipschitz_sigma; retain_weight,
                                           salun_fraction (paper: 0.5)
contrastive     forget + retain            contrastive_temperature retain_weight (CosFace)
project         none (closed form)         project=True; no training: removes the forget
                                           identities' centroid directions from the embedding
                                           (``projection.py``)
=============== ========================== =========================================================

``project=True`` on any trained method applies the same projection before its training.
"""

from __future__ import annotations

from jaxforget.methods.boundary_shrink import BOUNDARY_SHRINK
from jaxforget.methods.contrastive import CONTRASTIVE
from jaxforget.methods.dispersion import (
    DISPERSION,
    DISPERSION_AUG,
    HARD_DISPERSION,
    HARD_DISPERSION_AUG,
    augment_views,
)
from jaxforget.methods.finetune import FINETUNE, RETRAIN
from jaxforget.methods.gradient_ascent import GRADIENT_ASCENT
from jaxforget.methods.hparams import HParams, resolve_hparams
from jaxforget.methods.lipschitz import LIPSCHITZ
from jaxforget.methods.optim import (
    get_saliency_mask,
    make_optimizer,
    make_schedule,
    saliency_mask_transform,
    set_saliency_mask,
    top_fraction_mask,
    trainable_leaves,
    trainable_mask,
)
from jaxforget.methods.projection import PROJECT
from jaxforget.methods.random_labeling import RANDOM_LABELING
from jaxforget.methods.record import Method
from jaxforget.methods.registry import METHODS, get_method
from jaxforget.methods.saliency import compute_saliency_mask
from jaxforget.methods.state import Context, TrainState, init_state, trainable_tree, variables_of
from jaxforget.methods.step import Forward, make_update_step, normalize_images

__all__ = [
    "BOUNDARY_SHRINK", "CONTRASTIVE", "DISPERSION", "DISPERSION_AUG", "FINETUNE",
    "GRADIENT_ASCENT", "HARD_DISPERSION", "HARD_DISPERSION_AUG", "LIPSCHITZ", "METHODS", "PROJECT",
    "RANDOM_LABELING", "RETRAIN", "Context", "Forward", "HParams", "Method", "TrainState",
    "augment_views", "compute_saliency_mask", "get_method", "get_saliency_mask", "init_state",
    "make_optimizer", "make_schedule", "make_update_step", "normalize_images", "resolve_hparams",
    "saliency_mask_transform", "set_saliency_mask", "top_fraction_mask", "trainable_leaves",
    "trainable_mask", "trainable_tree", "variables_of",
]
