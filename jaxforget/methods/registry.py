"""Every unlearning method by name: ``get_method(config.method.name)``."""

from __future__ import annotations

from jaxforget.methods.boundary_shrink import BOUNDARY_SHRINK
from jaxforget.methods.contrastive import CONTRASTIVE
from jaxforget.methods.dispersion import (
    DISPERSION,
    DISPERSION_AUG,
    HARD_DISPERSION,
    HARD_DISPERSION_AUG,
)
from jaxforget.methods.finetune import FINETUNE, RETRAIN
from jaxforget.methods.gradient_ascent import GRADIENT_ASCENT
from jaxforget.methods.lipschitz import LIPSCHITZ
from jaxforget.methods.projection import PROJECT
from jaxforget.methods.random_labeling import RANDOM_LABELING
from jaxforget.methods.record import Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (FINETUNE, RETRAIN, DISPERSION, HARD_DISPERSION, DISPERSION_AUG, HARD_DISPERSION_AUG,
              RANDOM_LABELING, GRADIENT_ASCENT, BOUNDARY_SHRINK, LIPSCHITZ, CONTRASTIVE, PROJECT)
}


def get_method(name: str) -> Method:
    """The method registered under ``name`` (``config.method.name``)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (config field method.name); known methods: "
                         f"{', '.join(sorted(METHODS))}.") from None
