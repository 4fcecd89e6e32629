"""Gradient Ascent (paper Eq. 8): ascend the CosFace loss of the forget set.

Run:
    python -m jaxforget.main --config=configs/ga.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/ga.py:demo   (or :celeba, :orl)

Learning rate: the method's default (lr 1e-4); the rest as for every baseline (see
jaxforget/config.py, 'Baselines').
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("ga"), arg)
