"""Boundary Shrink (paper Eq. 9): one FGSM step (eps = method.bs_eps = 4/255 in normalised
pixels, about 2 grey levels) on a frozen copy of the original model; each forget image is
relabelled with the nearest wrong class (margin-free cosine) of its adversarial example and
trained towards it with CosFace.

Run:
    python -m jaxforget.main --config=configs/bs.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/bs.py:demo   (or :celeba, :orl)

Learning rate: the method's default (lr 1e-4); the rest as for every baseline (see
jaxforget/config.py, 'Baselines').
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("bs"), arg)
