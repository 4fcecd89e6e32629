"""Contrastive Unlearning: forget embeddings contrasted away from retain embeddings, plus CosFace on retain samples.

Run:
        python -m jaxforget.main --config=configs/contrastive.py --config.data.root=/path/to/celeba
Demo on synthetic identities (no data needed, a few minutes on a CPU):
        python -m jaxforget.main --config=configs/contrastive.py:demo
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.base_config("contrastive")
    return base.finalize(c, arg)
