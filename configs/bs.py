"""Boundary Shrink (paper Eq. 9): relabel each forget image with the nearest wrong class of its FGSM adversarial example under the frozen original model.

Run:
        python -m jaxforget.main --config=configs/bs.py --config.data.root=/path/to/celeba
Demo on synthetic identities (no data needed, a few minutes on a CPU):
        python -m jaxforget.main --config=configs/bs.py:demo
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.base_config("bs")
    return base.finalize(c, arg)
