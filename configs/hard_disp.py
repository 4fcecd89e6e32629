"""Hard Dispersion unlearning (paper Eq. 6): push each forget anchor from its most similar positive.

Run:
        python -m jaxforget.main --config=configs/hard_disp.py --config.data.root=/path/to/celeba
Demo on synthetic identities (no data needed, a few minutes on a CPU):
        python -m jaxforget.main --config=configs/hard_disp.py:demo
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.base_config("hard_disp")
    return base.finalize(c, arg)
