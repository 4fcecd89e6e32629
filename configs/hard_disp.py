"""Hard Dispersion unlearning (paper Eq. 6): push each forget anchor away from its most similar
positive in the batch.

Run:
    python -m jaxforget.main --config=configs/hard_disp.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities (no data needed, a few minutes on a CPU):
    python -m jaxforget.main --config=configs/hard_disp.py:demo
Real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/hard_disp.py:celeba   (or :orl)

Paper values: SGD over the whole backbone, random horizontal flip only, batch 32 (P x K so every
batch has positives), no retain loss. Lost in the paper's text and chosen here:

- margin m_d = 0 (push positives towards orthogonal; a config field, method.margin);
- learning rate (SGD, momentum 0.9, weight decay 5e-4, constant):
  * real MobileFaceNet (:celeba, :orl): 0.05 for 20 steps. Measured with tools/orl_sweep.py on
    ORL (5 forget identities): lr 0.05 / 20 steps / bn_mode 'train' was the best trade-off that
    kept retain mAP within 0.03 (forget mAP 0.997 -> 0.713, CS 0.688 -> 0.246, retain mAP
    0.961 -> 0.937); lr 0.1 or a negative margin forget more but cost retain 0.03-0.07; BatchNorm
    frozen costs retain more for the same forgetting. The forget set holds 3-5 train images per
    identity, so the loss saturates within ~20 steps (the paper's 1,000 iterations would only
    overfit these few images).
  * demo (small IResNet on synthetic identities): 0.01 for 150 steps.
  * paper scale (IResNet-50 on CelebA): 0.01 for 1,000 steps, not measured here (no GPU).
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    c = base.finalize(base.base_config("hard_disp"), arg)
    key = (arg or "").strip()
    c.method.lr = base.DISPERSION_LR[key]
    return c
