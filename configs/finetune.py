"""CosFace fine-tuning of the encoder and head on training identities: how base models are made
(the paper fine-tunes the InsightFace IResNet-50 on the CelebA training identities, s=64,
m=0.4). Used as a method it trains on the retain batches.

Run:
    python -m jaxforget.main --config=configs/finetune.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/finetune.py:demo   (or :celeba, :orl)

Learning rate: the method's default (lr 0.01, linear decay); the rest as for every baseline (see
jaxforget/config.py, 'Baselines').
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("finetune"), arg)
