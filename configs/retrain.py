"""Retrain: fine-tune the original on retain data only (the exact-unlearning reference).

Run:
        python -m jaxforget.main --config=configs/retrain.py --config.data.root=/path/to/celeba
Demo on synthetic identities (no data needed, a few minutes on a CPU):
        python -m jaxforget.main --config=configs/retrain.py:demo
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.base_config("retrain")
    return base.finalize(c, arg)
