"""Lipschitz unlearning with a SalUn mask (fraction 0.5): make the embedding of forget images insensitive... rather, smooth under input noise.

Run:
        python -m jaxforget.main --config=configs/lipschitz.py --config.data.root=/path/to/celeba
Demo on synthetic identities (no data needed, a few minutes on a CPU):
        python -m jaxforget.main --config=configs/lipschitz.py:demo
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.base_config("lipschitz")
    return base.finalize(c, arg)
