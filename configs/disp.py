"""Dispersion unlearning (paper Eq. 5): push every same-identity pair of the forget set apart.

Run (like configs/hard_disp.py, whose docstring gives the paper's settings, the values chosen
where the paper lost them, and the measurements behind them; both losses share them):
    python -m jaxforget.main --config=configs/disp.py[:demo|:celeba|:orl]
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.finalize(base.base_config("disp"), arg)
    c.method.lr = base.DISPERSION_LR[(arg or "").strip()]
    return c
