"""Lipschitz Unlearning (Foster et al. 2024, adapted): smooth the embedding of forget images.

Loss: ``mean over lipschitz_draws noise draws e ~ N(0, lipschitz_sigma^2) of
||z(x + e) - z(x)|| / ||e||`` on the forget batch (normalised-pixel units; the clean and noisy
copies share one forward pass), plus ``retain_weight * retain term`` on retain samples. The paper
runs it with SalUn at fraction 0.5 and a retention weight (value lost); ``configs/lipschitz.py``
sets both.
"""

from __future__ import annotations

from jaxforget import losses
from jaxforget.methods.hparams import HParams
from jaxforget.methods.record import Method
from jaxforget.methods.step import forget_valid


def lipschitz_unlearning_loss(fwd, head, batch, rng, hp: HParams, ctx):
    """Mean noise-to-embedding-change ratio on the forget batch."""
    del head, ctx
    part = batch["forget"]
    x = fwd.prepare(part["image"])
    loss = losses.lipschitz_loss(fwd.embed, x, rng, hp.lipschitz_draws, hp.lipschitz_sigma,
                                 forget_valid(part))
    return loss, {"lipschitz_ratio": loss}


LIPSCHITZ = Method(
    name="lipschitz", needs=("forget",), loss=lipschitz_unlearning_loss, uses_head=False,
    salun_loss="dispersion",
    description="Lipschitz Unlearning: minimise ||z(x+e)-z(x)||/||e|| on forget, + retain term,"
                " with SalUn-0.5.")
