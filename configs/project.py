"""Identity-subspace projection (beyond the paper): closed-form forgetting, no training.

The original model's embeddings of the forget train images give one centroid direction per
forget identity; the unlearned backbone is the original with those directions removed from its
embedding (folded into the last linear layer, so the checkpoint has the usual format). Seconds
instead of a training run; see jaxforget/methods/projection.py and docs/RESULTS.md.

Run:
    python -m jaxforget.main --config=configs/project.py --config.data.root=/path/to/celeba --config.model.init=backbone.pth
Demo on synthetic identities, or the real MobileFaceNet on ../shared faces:
    python -m jaxforget.main --config=configs/project.py:demo   (or :celeba, :orl)

`method.project=True` on any other config applies the same projection before that method trains.
"""

from jaxforget import config as base


def get_config(arg: str | None = None):
    return base.finalize(base.base_config("project"), arg)
