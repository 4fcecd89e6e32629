"""Gradient Ascent (paper Eq. 8): ascend the CosFace loss of the forget set.

Run:
        python -m jaxforget.main --config=configs/ga.py --config.data.root=/path/to/celeba
Demo on synthetic identities (no data needed, a few minutes on a CPU):
        python -m jaxforget.main --config=configs/ga.py:demo
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.base_config("ga")
    return base.finalize(c, arg)
