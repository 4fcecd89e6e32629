"""Retrain: fine-tune the original model with CosFace on retain data only (head trained too),
the exact-unlearning reference the approximate methods are compared with.

Run:
    python -m jaxforget.main --config=configs/retrain.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/retrain.py:demo   (or :celeba, :orl)

Learning rate: the method's default (lr 0.01, linear decay); the rest as for every baseline (see
jaxforget/config.py, 'Baselines').
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("retrain"), arg)
