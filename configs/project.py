"""Identity-subspace projection (beyond the paper): closed-form forgetting, no training.

The original model's embeddings of the forget train images give one centroid direction per
forget identity; the unlearned backbone is the original with those directions removed from its
embedding (folded into the last linear layer, so the checkpoint has the usual format). Seconds
instead of a training run; see jaxforget/methods/projection.py and docs/RESULTS.md.

Run:
    python -m jaxforget.main --config=configs/project.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/project.py:demo   (or :celeba, :orl, :celeba_wild)

`method.project=True` on any other config applies the same projection before that method trains.
Only `project` matters here: the training fields below are those every config has (so that
overrides such as tools/run_table.py's --set apply to every method), and a closed-form run
reads none of them.

Measured (docs/RESULTS.md; forget mAP, and retain mAP change on retain faces no method trains on):
:celeba, three seeds (section 3d): forget mAP 57.93 +- 0.59 (Original 94.38), forget CS 0.184
(0.515), retain 85.58 (-2.7), about 30 s per seed. :orl, three seeds (section 2b): forget mAP
56.93 +- 9.76 (Original 99.93), forget CS 0.151 (0.708), retain +0.1. :demo (section 1): forget
mAP 100.00 -> 23.87, CS 0.871 -> 0.081, retain mAP 98.91 -> 98.47 (-0.4).
:celeba_wild, three seeds (section 4d): forget mAP 29.58 +- 0.75 (Original 97.57), forget CS 0.065
(0.623), retain 88.24 (-0.8), CFP-FP mAP -1.6, about 2.5 minutes per seed.
"""

from jaxforget import config as base

# Every preset.
HPARAMS = dict(
    project=True,  # remove the forget identities' centroid directions (the whole method)
    optimizer="sgd", lr=1e-3, momentum=0.9, nesterov=False, weight_decay=5e-4,
    schedule="constant", warmup_steps=0, step_boundaries=(0.5, 0.75), step_factor=0.1,
    clip_norm=0.0,
    trainable="", bn_mode="train", flip=True,
    salun_fraction=0.0, salun_batches=8,
    retain_weight=0.0, retain_loss="cosface",
)


def get_config(arg: str | None = None):
    return base.method_config("project", HPARAMS, arg)
