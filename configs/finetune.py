"""CosFace fine-tuning of the encoder and head on training identities: how base models are made
(the paper fine-tunes the InsightFace IResNet-50 on the CelebA training identities, s=64,
m=0.4). Used as a method it trains on the retain batches.

Run:
    python -m jaxforget.main --config=configs/finetune.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/finetune.py:demo   (or :celeba, :orl, :celeba_wild)

Hyper-parameters: chosen here (not the paper's): lr 0.01 with linear decay (SGD, momentum 0.9,
weight decay 5e-4) and the step budget every method shares in a preset (jaxforget/config.py). Its
loss is CosFace on retain batches (retain_weight and retain_loss do not apply; retain_loss must
stay 'cosface').

Measured: nothing; docs/RESULTS.md has no run of this config (the demo's base model comes from
config.pretrain).
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
    return base.method_config("finetune", HPARAMS, arg)
