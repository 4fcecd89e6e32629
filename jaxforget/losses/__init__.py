"""Pure, jittable losses over L2-normalised embeddings.

``dispersion``: the paper's dispersion / hard dispersion losses (Eq. 5, 6) and the multi-view
extension; ``margin``: CosFace / ArcFace; ``baselines``: the pieces of RL, GA, Boundary Shrink,
Lipschitz and Contrastive Unlearning, and the retain terms. ``l2_normalize`` is re-exported from
:mod:`jaxforget.ops`.
"""

from jaxforget.losses.baselines import (
    boundary_shrink_labels,
    contrastive_unlearning_loss,
    embedding_distillation_loss,
    fgsm,
    gradient_ascent_loss,
    lipschitz_loss,
    nearest_wrong_class,
    random_labels,
)
from jaxforget.losses.dispersion import (
    dispersion_loss,
    hard_dispersion_loss,
    masked_dispersion,
    multiview_dispersion_loss,
    positive_cosine_stats,
    positive_mask,
)
from jaxforget.losses.margin import (
    MARGIN_KINDS,
    arcface_loss,
    cosface_loss,
    cosine_logits,
    margin_logits,
    margin_loss,
    softmax_cross_entropy,
)
from jaxforget.ops import l2_normalize

__all__ = [
    "MARGIN_KINDS",
    "arcface_loss",
    "boundary_shrink_labels",
    "contrastive_unlearning_loss",
    "cosface_loss",
    "cosine_logits",
    "dispersion_loss",
    "embedding_distillation_loss",
    "fgsm",
    "gradient_ascent_loss",
    "hard_dispersion_loss",
    "l2_normalize",
    "lipschitz_loss",
    "margin_logits",
    "margin_loss",
    "masked_dispersion",
    "multiview_dispersion_loss",
    "nearest_wrong_class",
    "positive_cosine_stats",
    "positive_mask",
    "random_labels",
    "softmax_cross_entropy",
]
