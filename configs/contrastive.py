"""Contrastive Unlearning: forget embeddings are anchors pulled towards retain embeddings of
other identities and pushed from their own identity (a reversed supervised-contrastive loss,
temperature method.contrastive_temperature), plus CosFace on retain samples.

Run:
    python -m jaxforget.main --config=configs/contrastive.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/contrastive.py:demo   (or :celeba, :orl)

The paper's hyper-parameters for this baseline were lost. Chosen: the method's defaults
(jaxforget.methods: lr 1e-3; SGD, momentum 0.9, weight decay 5e-4) and the step budget
shared by every method in each setting (jaxforget/config.py: 20 steps on the real MobileFaceNet,
150 in the demo, the paper's 1,000 otherwise). Not swept on the real faces yet (see
docs/RESULTS.md).
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("contrastive"), arg)
