"""Lipschitz unlearning: minimise ||z(x+e) - z(x)|| / ||e|| over method.lipschitz_draws noise
draws (sigma = method.lipschitz_sigma) on forget images, plus CosFace on retain samples, under a
SalUn mask keeping half of the weights (the paper's setting).

Run:
    python -m jaxforget.main --config=configs/lipschitz.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/lipschitz.py:demo   (or :celeba, :orl, :celeba_wild)

Hyper-parameters: SalUn keeping the top 50% of weights is the paper's; its retention weight was
lost (1.0 with retain CosFace is the project's choice), as was its learning rate: lr 1e-3 (SGD,
momentum 0.9, weight decay 5e-4, constant) with the step budget every method shares in a preset
(jaxforget/config.py). The SalUn ranking of this head-less loss uses the dispersion loss at
method.margin.

Measured (docs/RESULTS.md; forget mAP, and retain mAP change on retain faces no method trains on):
:celeba, three seeds (section 3): forget mAP 93.74 +- 2.04 (Original 94.38), forget CS 0.451
(0.515), retain 85.99 (-2.3); about 18 s per step on the project's 2-core CPU. Learning-rate
sweep, seed 0 (section 3c; Original 92.22): lr 1e-3 93.28 / -0.80, 1e-2 84.36 / -6.54. No setting
reaches hard dispersion's forget mAP; lr 1e-3 is kept (the three-seed table uses it). :orl, three
seeds (section 2b): forget mAP 100.00 +- 0.00 (Original 99.93), retain +1.0.
:celeba_wild, three seeds (section 4c): forget mAP 97.26 +- 2.58 (Original 97.57), forget CS 0.561
(0.623), retain 88.69 (-0.3), CFP-FP mAP -0.6; lr 1e-2 (seed 0, Original 98.85): 96.48 / -3.37.
"""

from jaxforget import config as base

# Every preset: the optimiser, what trains, the retain term, the noise.
HPARAMS = dict(
    optimizer="sgd", lr=1e-3, momentum=0.9, nesterov=False, weight_decay=5e-4,
    schedule="constant", warmup_steps=0, step_boundaries=(0.5, 0.75), step_factor=0.1,
    clip_norm=0.0,
    trainable="", bn_mode="train", flip=True,  # whole backbone, BatchNorm in train mode
    salun_fraction=0.5, salun_batches=8,  # SalUn: keep the top half of the weights
    margin=0.0,  # of the dispersion loss whose gradient ranks the weights for SalUn
    project=False,  # no identity-subspace projection before training
    retain_weight=1.0, retain_loss="cosface",  # lambda x CosFace on retain samples
    lipschitz_sigma=0.1,  # noise std, normalised-pixel units
    lipschitz_draws=4,  # noise draws per image
)


def get_config(arg: str | None = None):
    return base.method_config("lipschitz", HPARAMS, arg)
