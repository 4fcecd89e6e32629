"""Lipschitz unlearning: minimise ||z(x+e) - z(x)|| / ||e|| over method.lipschitz_draws noise
draws (sigma = method.lipschitz_sigma) on forget images, plus CosFace on retain samples, under a
SalUn mask keeping half of the weights (the paper's setting).

Run:
    python -m jaxforget.main --config=configs/lipschitz.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/lipschitz.py:demo   (or :celeba, :orl)

The paper's hyper-parameters for this baseline were lost. Chosen: the method's defaults
(jaxforget.methods: lr 1e-3; SGD, momentum 0.9, weight decay 5e-4) and the step budget
shared by every method in each setting (jaxforget/config.py: 20 steps on the real MobileFaceNet,
150 in the demo, the paper's 1,000 otherwise). Not swept on the real faces yet (see
docs/RESULTS.md).
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("lipschitz"), arg)
