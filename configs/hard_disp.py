"""Hard Dispersion unlearning (paper Eq. 6): push each forget anchor away from its most similar
positive in the batch.

Run:
    python -m jaxforget.main --config=configs/hard_disp.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities (no data needed, a few minutes on a CPU):
    python -m jaxforget.main --config=configs/hard_disp.py:demo
Real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/hard_disp.py:celeba   (or :orl, :celeba_wild)

Paper values: SGD over the whole backbone, random horizontal flip only, batch 32 (P x K so every
batch has positives), no retain loss. Lost in the paper's text and chosen here:

- margin m_d = 0 (push positives towards orthogonal; a config field, method.margin);
- learning rate (SGD, momentum 0.9, weight decay 5e-4, constant):
  * real MobileFaceNet (:celeba, :orl): 0.05 for 20 steps. Measured with studies/orl_sweep.py on
    ORL (5 forget identities, seed 0; docs/RESULTS.md section 2): lr 0.05 / 20 steps / bn_mode
    'train' was the best trade-off that kept retain mAP within 0.03 (forget mAP 0.997 -> 0.713,
    CS 0.688 -> 0.246, retain mAP 0.961 -> 0.937); lr 0.1 or a negative margin forget more but
    cost retain 0.03-0.07; BatchNorm frozen costs retain more for the same forgetting. The forget
    set holds 3-5 train images per identity, so the loss saturates within ~20 steps (the paper's
    1,000 iterations would only overfit these few images).
  * :celeba_wild (about 13 train photos per forget person): 0.05 for 100 steps, from the step
    curve of docs/RESULTS.md section 4a (seed 0): forget mAP 98.85 -> 40.0 after 50 steps, 37.4
    after 100, 35.0-36.4 from 250 to 1,000, while retain mAP falls 5.3 -> 6.3 -> 11.3 points and
    CFP-FP mAP 6.6 -> 8.6 -> 13.5; lr 0.01 spends 2.8 retain points for forget 89.6 (50 steps);
    BatchNorm frozen collapses retention (retain mAP 52.0 after 50 steps), bn_mode 'batch' forgets
    less and retains no better.
  * demo (small IResNet on synthetic identities): the output layer only (`trainable='fc/|features/'`,
    BatchNorm frozen), lr 0.1 for 150 steps, as on real faces the output layer keeps the retain
    people where the whole backbone does not (docs/RESULTS.md section 4d); on the demo's base model
    the whole backbone at lr 0.01 costs 11.9 points of retain mAP for forget mAP 25.7
    (docs/RESULTS.md section 1).
  * paper scale (IResNet-50 on CelebA): 0.01 for 1,000 steps, not measured here (no GPU).

Measured (docs/RESULTS.md; forget mAP, and retain mAP change on retain faces no method trains on):
:demo (section 1): forget mAP 100.00 -> 31.81 (32%), CS 0.871 -> 0.154, retain mAP 98.91 -> 98.15.
:celeba, three seeds (section 3): forget mAP 71.65 +- 1.11 (Original 94.38), forget CS 0.272
(0.515), retain 80.22 (-8.1). :orl, three seeds (section 2b): forget mAP 70.22 +- 8.45 (Original
99.93), forget CS 0.274 (0.708), retain -1.6.
:celeba_wild, three seeds (section 4b): forget mAP 36.02 +- 1.20 (Original 97.57), forget CS 0.104
(0.623), retain 82.13 (-6.9), CFP-FP mAP -9.0; on the output layer only (section 4d) 30.72 +- 2.48
for retain -1.4.
"""

from jaxforget import config as base

# Every preset: the optimiser, the loss.
HPARAMS = dict(
    optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=5e-4,
    schedule="constant", warmup_steps=0, step_boundaries=(0.5, 0.75), step_factor=0.1,
    clip_norm=0.0, flip=True,
    salun_fraction=0.0, salun_batches=8,  # SalUn off
    project=False,  # no identity-subspace projection before training
    retain_weight=0.0, retain_loss="cosface",  # no retain term (paper: lambda = 0)
    margin=0.0,  # m_d
    # Dispersion over augmented views of each image (beyond the paper): off.
    augmented_views=False, num_views=2, view_positives="identity", view_crop=0.1,
    view_jitter=0.2,
)
# Per preset: the learning rate and what trains (see above); steps and batches:
# config.STEP_BUDGET. The paper's: the whole backbone, BatchNorm in train mode; the demo: the
# output layer, BatchNorm frozen.
_WHOLE = dict(trainable="", bn_mode="train")
PER_PRESET = {
    "": dict(lr=0.01, **_WHOLE),
    "demo": dict(lr=0.1, trainable="fc/|features/", bn_mode="frozen"),
    "celeba": dict(lr=0.05, **_WHOLE), "orl": dict(lr=0.05, **_WHOLE),
    "celeba_wild": dict(lr=0.05, **_WHOLE),
}


def get_config(arg: str | None = None):
    return base.method_config("hard_disp", HPARAMS, arg, PER_PRESET)
