"""CosFace fine-tuning of the encoder on every train identity (how base models are made).

Run:
        python -m jaxforget.main --config=configs/finetune.py --config.data.root=/path/to/celeba
Demo on synthetic identities (no data needed, a few minutes on a CPU):
        python -m jaxforget.main --config=configs/finetune.py:demo

The paper fine-tunes the InsightFace IResNet-50 on the CelebA training identities with CosFace
(s=64, m=0.4). Chosen: SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule.
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.base_config("finetune")
    return base.finalize(c, arg)
