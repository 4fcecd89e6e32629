"""Retrain: fine-tune the original model with CosFace on retain data only (head trained too),
the exact-unlearning reference the approximate methods are compared with.

Run:
    python -m jaxforget.main --config=configs/retrain.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/retrain.py:demo   (or :celeba, :orl)

The paper's hyper-parameters for this baseline were lost. Chosen: the method's defaults
(jaxforget.methods: lr 0.01, linear decay; SGD, momentum 0.9, weight decay 5e-4) and the same step budget as
the dispersion methods for each setting (20 steps on the real MobileFaceNet, 150 in the demo), so
every method sees the forget data equally often. Not swept on the real faces yet (see
docs/RESULTS.md).
"""

from jaxforget import config as base

STEPS = {"": 1000, "demo": 150, "celeba": 20, "orl": 20}


def get_config(arg: str | None = None):
    c = base.finalize(base.base_config("retrain"), arg)
    c.method.steps = STEPS[(arg or "").strip()]
    return c
