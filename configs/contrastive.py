"""Contrastive Unlearning: forget embeddings are anchors pulled towards retain embeddings of
other identities and pushed from their own identity (a reversed supervised-contrastive loss,
temperature method.contrastive_temperature), plus CosFace on retain samples.

Run:
    python -m jaxforget.main --config=configs/contrastive.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/contrastive.py:demo   (or :celeba, :orl)

Learning rate: the method's default (lr 1e-3); the rest as for every baseline (see
jaxforget/config.py, 'Baselines').
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("contrastive"), arg)
