"""Builds backbones by name from a config, and loads their pretrained variables.

``model_cfg`` is an ``ml_collections.ConfigDict`` or a plain dict with the fields

============== ======================================================================= ===========
field          meaning                                                                 default
============== ======================================================================= ===========
name           ``iresnet18|34|50|100|200`` (aliases ``r50`` ...) or ``mobilefacenet``   required
width_mult     multiplies channel widths (small test models)                           1.0
input_size     ``(H, W)``                                                              (112, 112) / (112, 96)
embedding_size embedding dimension                                                     512 / 128
dtype          ``float32`` or ``bfloat16`` computation (parameters stay float32)        float32
dropout        dropout rate before the embedding layer                                 0.0
init           checkpoint to start from (orbax dir, ``.pth`` or ``.ckpt``); empty: random ''
seed           random-init seed when ``init`` is empty                                 0
============== ======================================================================= ===========
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxforget.models.iresnet import IRESNET_STAGES, IResNet, fixed_parameter_shapes
from jaxforget.models.mobilefacenet import MobileFaceNet

_DEFAULTS = {
    "iresnet": {"input_size": (112, 112), "embedding_size": 512, "pixel_mean": 127.5, "pixel_std": 127.5},
    "mobilefacenet": {"input_size": (112, 96), "embedding_size": 128, "pixel_mean": 127.5, "pixel_std": 128.0},
}


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
        return "mobilefacenet" if self.name == "mobilefacenet" else "iresnet"

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
        return fixed_parameter_shapes(self.module) if self.family == "iresnet" else {}

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 (or float) pixels -> the float32 inputs the module expects."""
        return (jnp.asarray(images, jnp.float32) - self.pixel_mean) / self.pixel_std

    def dummy_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, *self.input_size, 3), jnp.float32)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
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
    if n in ("mobilefacenet", "mfn"):
        return "mobilefacenet"
    for prefix in ("iresnet", "r"):
        if n.startswith(prefix) and n[len(prefix):].isdigit() and int(n[len(prefix):]) in IRESNET_STAGES:
            return f"iresnet{int(n[len(prefix):])}"
    raise ValueError(
        f"model.name {name!r} is not known; use one of "
        + ", ".join(f"iresnet{d}" for d in IRESNET_STAGES)
        + ", mobilefacenet"
    )


def build_model(model_cfg: Any) -> ModelBundle:
    """Builds the backbone named by ``model_cfg.name`` (see the module docstring for fields)."""
    name = canonical_name(_get(model_cfg, "name", ""))
    family = "mobilefacenet" if name == "mobilefacenet" else "iresnet"
    defaults = _DEFAULTS[family]
    input_size = tuple(int(s) for s in _get(model_cfg, "input_size", defaults["input_size"]))
    if len(input_size) != 2 or any(s <= 0 or s % 16 for s in input_size):
        raise ValueError(
            f"model.input_size {input_size} must be (H, W) with both sides divisible by 16, e.g. "
            f"{defaults['input_size']}"
        )
    embedding_size = int(_get(model_cfg, "embedding_size", defaults["embedding_size"]))
    width_mult = float(_get(model_cfg, "width_mult", 1.0))
    dropout = float(_get(model_cfg, "dropout", 0.0))
    dtype = str(_get(model_cfg, "dtype", "float32"))
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype {dtype!r} must be 'float32' or 'bfloat16'")
    if width_mult <= 0 or not 0.0 <= dropout < 1.0 or embedding_size <= 0:
        raise ValueError(
            f"model.width_mult ({width_mult}) and model.embedding_size ({embedding_size}) must be positive and "
            f"model.dropout ({dropout}) in [0, 1)"
        )
    if family == "mobilefacenet":
        module: nn.Module = MobileFaceNet(
            embedding_size=embedding_size, input_size=input_size, width_mult=width_mult, dropout=dropout, dtype=dtype
        )
    else:
        module = IResNet(
            stage_blocks=IRESNET_STAGES[int(name[len("iresnet"):])],
            width_mult=width_mult,
            embedding_size=embedding_size,
            input_size=input_size,
            dropout=dropout,
            dtype=dtype,
        )
    return ModelBundle(module, name, input_size, embedding_size, defaults["pixel_mean"], defaults["pixel_std"])


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


def _check_against(variables: Mapping[str, Any], bundle: ModelBundle, source: str) -> dict[str, Any]:
    """Checks stored Flax variables against the bundle's shapes; returns them as float32 numpy."""
    from jaxforget.convert import CheckpointMismatchError, _flat

    expected = dict(_flat(abstract_variables(bundle)))
    got = dict(_flat(variables))
    problems = []
    for k in sorted(expected.keys() | got.keys(), key=lambda k: (k[0] != "params", k)):
        name = "/".join(k)
        if k not in got:
            problems.append(f"missing variable {name}: the model expects shape {tuple(expected[k].shape)}")
        elif k not in expected:
            problems.append(f"unexpected variable {name} with shape {tuple(np.shape(got[k]))}")
        elif tuple(np.shape(got[k])) != tuple(expected[k].shape):
            problems.append(
                f"shape mismatch for {name}: checkpoint has {tuple(np.shape(got[k]))}, the model expects "
                f"{tuple(expected[k].shape)}"
            )
    if problems:
        shown = problems[:25]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise CheckpointMismatchError(
            f"{source}: {len(problems)} variable(s) do not fit model {bundle.config()}:\n  " + "\n  ".join(shown)
            + more + "\nLeave model fields empty to use the checkpoint's stored config, or fix the config."
        )
    return {c: jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), dict(t)) for c, t in variables.items()}


def _merge_cfg(model_cfg: Any, stored: Mapping[str, Any]) -> dict[str, Any]:
    """Fields given in ``model_cfg`` win over the checkpoint's; the architecture must agree."""
    merged = dict(stored)
    for key in ("name", "width_mult", "input_size", "embedding_size", "dtype", "dropout"):
        value = _get(model_cfg, key, None)
        if value not in (None, "", "auto"):
            merged[key] = value
    return merged


def load_pretrained(model_cfg: Any) -> tuple[ModelBundle, dict[str, Any]]:
    """Builds the model and its variables from ``model_cfg.init``.

    * empty ``init``: random initialisation with ``model_cfg.seed`` (default 0);
    * a directory written by ``tools/convert_insightface.py`` / ``save_variables``: the stored model
      config fills any field ``model_cfg`` leaves empty (``name`` may be ``''`` or ``'auto'``); only
      its ``params`` and ``batch_stats`` are returned (other stored entries are ignored);
    * a PyTorch ``.pth`` / ``.pt`` / ``.ckpt``: read safely and converted on the fly; IResNet vs
      MobileFaceNet (and the depth) are detected from the keys.

    Raises a ``CheckpointMismatchError`` naming every key/shape that disagrees with the config.
    """
    init = str(_get(model_cfg, "init", "") or "")
    if not init:
        bundle = build_model(model_cfg)
        return bundle, init_variables(bundle, int(_get(model_cfg, "seed", 0)))

    from jaxforget import checkpoint, convert

    path = pathlib.Path(init).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model.init {init!r} does not exist; give an orbax directory or a .pth/.ckpt file")
    if path.is_dir():
        variables, metadata = checkpoint.load_variables(path)
        stored = metadata.get("model")
        if not isinstance(stored, Mapping):
            raise ValueError(f"{path}: metadata has no 'model' config; was it written by tools/convert_insightface.py?")
        merged = _merge_cfg(model_cfg, stored)
        if canonical_name(merged["name"]) != canonical_name(stored["name"]):
            raise ValueError(
                f"{path}: holds a {stored['name']} but model.name is {merged['name']!r}; set model.name to "
                f"{stored['name']!r} or leave it empty"
            )
        bundle = build_model(merged)
        # Other entries a runner may store beside the backbone (e.g. a CosFace 'head') are not
        # backbone variables; only the flax collections are loaded.
        backbone = {c: variables[c] for c in ("params", "batch_stats") if c in variables}
        return bundle, _check_against(backbone, bundle, str(path))

    state_dict = convert.load_torch_state_dict(path)
    name = _get(model_cfg, "name", "")
    arch = "auto"
    if name not in ("", "auto"):
        arch = "mobilefacenet" if canonical_name(name) == "mobilefacenet" else "iresnet"
    size = _get(model_cfg, "input_size", None)
    info = convert.detect_arch(state_dict, arch, tuple(size) if size else None, source=str(path))
    merged = _merge_cfg(model_cfg, info.model_config())
    if canonical_name(merged["name"]) != info.name:
        raise ValueError(f"{path}: holds a {info.name} but model.name is {merged['name']!r}")
    bundle = build_model(merged)
    variables = convert.torch_to_flax(state_dict, abstract_variables(bundle), bundle.fixed_parameters(), str(path))
    return bundle, variables
