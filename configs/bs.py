"""Boundary Shrink (paper Eq. 9): one FGSM step (eps = method.bs_eps = 4/255 in normalised
pixels, about 2 grey levels) on a frozen copy of the original model; each forget image is
relabelled with the nearest wrong class (margin-free cosine) of its adversarial example and
trained towards it with CosFace.

Run:
    python -m jaxforget.main --config=configs/bs.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/bs.py:demo   (or :celeba, :orl)

The paper's hyper-parameters for this baseline were lost. Chosen: the method's defaults
(jaxforget.methods: lr 1e-4; SGD, momentum 0.9, weight decay 5e-4) and the step budget
shared by every method in each setting (jaxforget/config.py: 20 steps on the real MobileFaceNet,
150 in the demo, the paper's 1,000 otherwise). Not swept on the real faces yet (see
docs/RESULTS.md).
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("bs"), arg)
