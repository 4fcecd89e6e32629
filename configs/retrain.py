"""Retrain: fine-tune the original model with CosFace on retain data only (head trained too),
the exact-unlearning reference the approximate methods are compared with.

Run:
    python -m jaxforget.main --config=configs/retrain.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/retrain.py:demo   (or :celeba, :orl, :celeba_wild)

Hyper-parameters: the paper's values were lost; chosen here: lr 0.01 with linear decay (SGD,
momentum 0.9, weight decay 5e-4) and the step budget every method shares in a preset
(jaxforget/config.py). Not swept. Its loss is CosFace on retain batches (retain_weight and
retain_loss do not apply; retain_loss must stay 'cosface').

Measured (docs/RESULTS.md; forget mAP, and retain mAP change on retain faces no method trains on):
:celeba, three seeds (section 3): forget mAP 93.94 +- 4.19 (Original 94.38), forget CS 0.498
(0.515), retain 85.48 (-2.8). :orl, three seeds (section 2b): forget mAP 100.00 +- 0.00 (Original
99.93), retain +1.5.
"""

from jaxforget import config as base

# Every preset: the optimiser and what trains.
HPARAMS = dict(
    optimizer="sgd", lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4,
    schedule="linear", warmup_steps=0, step_boundaries=(0.5, 0.75), step_factor=0.1,
    clip_norm=0.0,
    trainable="", bn_mode="train", flip=True,  # whole backbone (and head), BatchNorm in train mode
    salun_fraction=0.0, salun_batches=8,  # SalUn off
    project=False,  # no identity-subspace projection before training
    retain_weight=0.0, retain_loss="cosface",  # unused: the loss is CosFace on retain batches
)


def get_config(arg: str | None = None):
    return base.method_config("retrain", HPARAMS, arg)
