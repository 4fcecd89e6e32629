"""Random Labeling (paper Eq. 7): CosFace towards uniformly random labels on the forget set.

Run:
        python -m jaxforget.main --config=configs/rl.py --config.data.root=/path/to/celeba
Demo on synthetic identities (no data needed, a few minutes on a CPU):
        python -m jaxforget.main --config=configs/rl.py:demo
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.base_config("rl")
    return base.finalize(c, arg)
