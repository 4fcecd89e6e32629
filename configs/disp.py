"""Dispersion unlearning (paper Eq. 5): push every same-identity pair of the forget set apart.

Run:
        python -m jaxforget.main --config=configs/disp.py --config.data.root=/path/to/celeba
Demo on synthetic identities (no data needed, a few minutes on a CPU):
        python -m jaxforget.main --config=configs/disp.py:demo
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.base_config("disp")
    return base.finalize(c, arg)
