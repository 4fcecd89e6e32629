"""Random Labeling (paper Eq. 7): CosFace towards uniformly random labels on the forget set,
plus CosFace on retain samples (lambda = method.retain_weight, default 1).

Run:
    python -m jaxforget.main --config=configs/rl.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/rl.py:demo   (or :celeba, :orl)

Learning rate: the method's default (lr 1e-3); the rest as for every baseline (see
jaxforget/config.py, 'Baselines').
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("rl"), arg)
