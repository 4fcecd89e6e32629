"""Lipschitz Unlearning (Foster et al. 2024, adapted): smooth the embedding of forget images.

Loss: ``mean over lipschitz_draws noise draws e ~ N(0, lipschitz_sigma^2) of
||z(x + e) - z(x)|| / ||e||`` on the forget batch (normalised-pixel units; the clean and noisy
copies share one forward pass), plus ``retain_weight * retain term`` on retain samples. The paper
runs it with SalUn at fraction 0.5, which is this method's default.
"""

from __future__ import annotations

from jaxforget import losses
from jaxforget.methods.base import HParams, Method, forget_valid


def lipschitz_unlearning_loss(fwd, head, batch, rng, hp: HParams, ctx):
    del head, ctx
    part = batch["forget"]
    x = fwd.prepare(part["image"])
    loss = losses.lipschitz_loss(fwd.embed, x, rng, hp.lipschitz_draws, hp.lipschitz_sigma,
                                 forget_valid(part))
    return loss, {"lipschitz_ratio": loss}


LIPSCHITZ = Method(
    name="lipschitz", needs=("forget",), loss=lipschitz_unlearning_loss, uses_head=False,
    description="Lipschitz Unlearning: minimise ||z(x+e)-z(x)||/||e|| on forget, + retain term,"
                " with SalUn-0.5.",
    # Paper: retention weight (value lost; 1.0 is the project's choice) and SalUn-0.5.
    defaults={"retain_weight": 1.0, "salun_fraction": 0.5})
