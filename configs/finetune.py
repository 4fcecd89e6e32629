"""CosFace fine-tuning of the encoder and head on training identities: how base models are made
(the paper fine-tunes the InsightFace IResNet-50 on the CelebA training identities, s=64,
m=0.4). Used as a method it trains on the retain batches.

Run:
    python -m jaxforget.main --config=configs/finetune.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/finetune.py:demo   (or :celeba, :orl)

The paper's hyper-parameters for this baseline were lost. Chosen: the method's defaults
(jaxforget.methods: lr 0.01, linear decay; SGD, momentum 0.9, weight decay 5e-4) and the step budget
shared by every method in each setting (jaxforget/config.py: 20 steps on the real MobileFaceNet,
150 in the demo, the paper's 1,000 otherwise). Not swept on the real faces yet (see
docs/RESULTS.md).
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("finetune"), arg)
