"""Builds backbones by name from a config (loading pretrained variables is :mod:`.loading`'s job).

``model_cfg`` is an ``ml_collections.ConfigDict`` or a plain dict with the fields

============== ======================================================================= ===========
field          meaning                                                                 default
============== ======================================================================= ===========
name           ``iresnet18|34|50|100|200`` (aliases ``r50`` ...), ``mobilefacenet`` or ``mbf``  required
width_mult     multiplies channel widths (small test models)                           1.0
input_size     ``(H, W)``                                                              the family's
embedding_size embedding dimension                                                     the family's
dtype          ``float32`` or ``bfloat16`` computation (parameters stay float32)        float32
dropout        dropout rate before the embedding layer                                 0.0
init           checkpoint to start from (orbax dir, ``.pth`` or ``.ckpt``); empty: random ''
seed           random-init seed when ``init`` is empty                                 0
============== ======================================================================= ===========

Everything that differs between the backbone families (IResNet, the CASIA MobileFaceNet, and
arcface_torch's MobileFaceNet ``mbf`` of InsightFace's ``buffalo_s`` pack) is one row of
:data:`FAMILIES`; code that must tell them apart looks the row up with :func:`family_of`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxforget import ops
from jaxforget.models.iresnet import IRESNET_STAGES, fixed_parameter_shapes, iresnet
from jaxforget.models.mbf import ArcFaceMobileFaceNet
from jaxforget.models.mobilefacenet import MobileFaceNet


@dataclasses.dataclass(frozen=True)
class Family:
    """One backbone family: how to build it and the constants that go with it.

    ``build(name, **fields)`` makes the Flax module of the canonical model ``name`` from the
    config fields ``embedding_size``, ``input_size``, ``width_mult``, ``dropout`` and ``dtype``.
    ``fixed_parameters(module)`` gives the PyTorch parameters the module holds as constant ones.
    ``output_layer`` is the (linear, BatchNorm) module pair that produces the embedding.
    """

    name: str
    models: tuple[str, ...]  # canonical model names of the family
    build: Callable[..., nn.Module]
    input_size: tuple[int, int]
    embedding_size: int
    pixel_mean: float
    pixel_std: float
    fixed_parameters: Callable[[nn.Module], dict[str, tuple[int, ...]]]
    output_layer: tuple[tuple[str, ...], tuple[str, ...]]


FAMILIES: dict[str, Family] = {
    "iresnet": Family(
        name="iresnet",
        models=tuple(f"iresnet{d}" for d in IRESNET_STAGES),
        build=lambda name, **fields: iresnet(int(name[len("iresnet"):]), **fields),
        input_size=(112, 112),
        embedding_size=512,
        pixel_mean=127.5,
        pixel_std=127.5,
        fixed_parameters=fixed_parameter_shapes,
        output_layer=(("fc",), ("features",)),
    ),
    "mobilefacenet": Family(
        name="mobilefacenet",
        models=("mobilefacenet",),
        build=lambda name, **fields: MobileFaceNet(**fields),
        input_size=(112, 96),
        embedding_size=128,
        pixel_mean=127.5,
        pixel_std=128.0,
        fixed_parameters=lambda module: {},
        output_layer=(("linear1", "conv"), ("linear1", "bn")),
    ),
    "mbf": Family(
        name="mbf",
        models=("mbf",),
        build=lambda name, **fields: ArcFaceMobileFaceNet(**fields),
        input_size=(112, 112),
        embedding_size=512,
        pixel_mean=127.5,
        pixel_std=127.5,
        fixed_parameters=fixed_parameter_shapes,
        output_layer=(("fc",), ("features",)),
    ),
}
_ALIASES = {"mfn": "mobilefacenet"}


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A backbone and what is needed to feed it.

    Images (uint8 RGB NHWC at ``input_size``) are normalised as ``(x - pixel_mean) / pixel_std``
    before ``module.apply(variables, x, train=False)``, which returns unnormalised embeddings
    ``(B, embedding_size)``.
    """

    module: nn.Module
    name: str
    input_size: tuple[int, int]
    embedding_size: int
    pixel_mean: float
    pixel_std: float

    @property
    def family(self) -> str:
        return family_of(self.name).name

    def config(self) -> dict[str, Any]:
        """The model config that rebuilds this bundle (stored in converted checkpoints)."""
        m = self.module
        return {
            "name": self.name,
            "width_mult": float(m.width_mult),
            "input_size": list(self.input_size),
            "embedding_size": int(self.embedding_size),
            "dtype": str(jnp.dtype(m.dtype).name) if not isinstance(m.dtype, str) else m.dtype,
            "dropout": float(m.dropout),
        }

    def fixed_parameters(self) -> dict[str, tuple[int, ...]]:
        """PyTorch parameters held as constant ones by the Flax module (see ``iresnet``)."""
        return family_of(self.name).fixed_parameters(self.module)

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 (or float) pixels -> the float32 inputs the module expects."""
        return ops.normalize_images(images, self.pixel_mean, self.pixel_std)

    def dummy_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, *self.input_size, 3), jnp.float32)


def config_field(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` of a dict, ``ConfigDict`` or object; ``default`` when missing or None."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    try:
        value = cfg.get(key, default)  # ConfigDict
    except AttributeError:
        value = getattr(cfg, key, default)
    return default if value is None else value


def canonical_name(name: str) -> str:
    """``'r50'``/``'iresnet50'``/``'IResNet50'`` -> ``'iresnet50'``; ``'mobilefacenet'`` unchanged."""
    n = str(name).strip().lower()
    n = _ALIASES.get(n, n)
    if any(n in f.models for f in FAMILIES.values()):
        return n
    for prefix in ("iresnet", "r"):
        if n.startswith(prefix) and n[len(prefix):].isdigit() and int(n[len(prefix):]) in IRESNET_STAGES:
            return f"iresnet{int(n[len(prefix):])}"
    raise ValueError(
        f"model.name {name!r} is not known; use one of "
        + ", ".join(m for f in FAMILIES.values() for m in f.models)
    )


def family_of(name: str) -> Family:
    """The :class:`Family` of a model name (any form :func:`canonical_name` accepts)."""
    canonical = canonical_name(name)
    return next(f for f in FAMILIES.values() if canonical in f.models)


def build_model(model_cfg: Any) -> ModelBundle:
    """Builds the backbone named by ``model_cfg.name`` (see the module docstring for fields)."""
    name = canonical_name(config_field(model_cfg, "name", ""))
    family = family_of(name)
    input_size = tuple(int(s) for s in config_field(model_cfg, "input_size", family.input_size))
    if len(input_size) != 2 or any(s <= 0 or s % 16 for s in input_size):
        raise ValueError(
            f"model.input_size {input_size} must be (H, W) with both sides divisible by 16, e.g. "
            f"{family.input_size}"
        )
    embedding_size = int(config_field(model_cfg, "embedding_size", family.embedding_size))
    width_mult = float(config_field(model_cfg, "width_mult", 1.0))
    dropout = float(config_field(model_cfg, "dropout", 0.0))
    dtype = str(config_field(model_cfg, "dtype", "float32"))
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype {dtype!r} must be 'float32' or 'bfloat16'")
    if width_mult <= 0 or not 0.0 <= dropout < 1.0 or embedding_size <= 0:
        raise ValueError(
            f"model.width_mult ({width_mult}) and model.embedding_size ({embedding_size}) must be positive and "
            f"model.dropout ({dropout}) in [0, 1)"
        )
    module = family.build(
        name, embedding_size=embedding_size, input_size=input_size, width_mult=width_mult, dropout=dropout,
        dtype=dtype,
    )
    return ModelBundle(module, name, input_size, embedding_size, family.pixel_mean, family.pixel_std)


def abstract_variables(bundle: ModelBundle) -> dict[str, Any]:
    """Shapes and dtypes of the bundle's variables (``jax.eval_shape``; allocates nothing)."""
    return jax.eval_shape(lambda: bundle.module.init(jax.random.PRNGKey(0), bundle.dummy_input(), train=False))


def module_order(bundle: ModelBundle) -> list[tuple[str, ...]]:
    """Paths of the bundle's submodules in call order (= PyTorch's registration order).

    Flax sorts variable dicts by name; exporting with this order gives a state_dict ordered like
    InsightFace's.
    """
    order: list[tuple[str, ...]] = []

    def record(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        if context.method_name == "__call__":
            path = tuple(context.module.path)
            if path not in order:
                order.append(path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        abstract_variables(bundle)
    return order


def init_variables(bundle: ModelBundle, seed: int = 0) -> dict[str, Any]:
    """Random variables ``{'params', 'batch_stats'}`` for the bundle (PRNG seed ``seed``).

    The key uses JAX's ``rbg`` generator: XLA compiles it several times faster than threefry for
    the dozens of parameter initialisers of a ResNet (10 s -> 3 s on a small CPU). The values are
    deterministic for a given seed and platform.
    """
    return dict(_jit_init(bundle.module, bundle.input_size, jax.random.key(seed, impl="rbg")))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jit_init(module: nn.Module, input_size: tuple[int, int], key: jax.Array) -> Any:
    # Modules are hashable dataclasses: one compilation per architecture, reused across seeds.
    return module.init(key, jnp.zeros((1, *input_size, 3), jnp.float32), train=False)
