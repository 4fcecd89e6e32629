"""Lipschitz unlearning: minimise ||z(x+e) - z(x)|| / ||e|| over method.lipschitz_draws noise
draws (sigma = method.lipschitz_sigma) on forget images, plus CosFace on retain samples, under a
SalUn mask keeping half of the weights (the paper's setting).

Run:
    python -m jaxforget.main --config=configs/lipschitz.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/lipschitz.py:demo   (or :celeba, :orl)

Learning rate: the method's default (lr 1e-3); the rest as for every baseline (see
jaxforget/config.py, 'Baselines').
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("lipschitz"), arg)
