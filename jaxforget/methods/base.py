"""Unlearning methods as optax update rules: the train state, the method record, the update step.

What trains (every method):

* the whole backbone (every ``params`` leaf, BatchNorm scales/biases and PReLU slopes included),
  or, with ``method.trainable`` (a regular expression), only the leaves whose '/'-joined path
  matches it (e.g. ``'linear1/'``: MobileFaceNet's output layer). Frozen leaves get no gradient
  (``stop_gradient``, so XLA drops their backward pass), a final update of ``-0.0`` (bit-identical
  after any weight decay or momentum) and, in ``bn_mode='train'``, unchanged running statistics;
* BatchNorm running statistics: updated in train mode (``method.bn_mode='train'``, like PyTorch's
  ``model.train()``: each forward pass of the trained model moves them), or left unchanged with
  eval-mode normalisation (``bn_mode='frozen'``);
* the CosFace head (``TrainState.head``, class weights ``(C, d)``): frozen, except for the methods
  that train it (``finetune`` and ``retrain``, :attr:`Method.trains_head`).

The optax chain, from ``method.*`` config fields (:class:`HParams`)::

    clip_by_global_norm(clip_norm)          if clip_norm > 0
    sgd:   add_decayed_weights(wd) -> trace(momentum, nesterov) -> -lr(t)   (PyTorch SGD, L2 in grad)
    adam:  add_decayed_weights(wd) -> scale_by_adam -> -lr(t)               (PyTorch Adam, L2 in grad)
    adamw: scale_by_adam -> add_decayed_weights(wd) -> -lr(t)              (decoupled decay)
    SalUn mask of the final update          if salun_fraction > 0 (see ``saliency.py``)
    freeze of the leaves ``trainable`` excludes   if trainable != ''

``lr(t)``: ``schedule`` constant | cosine | linear | step (x ``step_factor`` at each fraction of
``steps`` in ``step_boundaries``), after a linear warm-up of ``warmup_steps``.

The runner's calls::

    method = get_method(cfg.method.name)
    ctx = Context(apply_fn=bundle.module.apply, pixel_mean=..., pixel_std=..., num_classes=C,
                  head_kind=cfg.head.kind, head_s=cfg.head.s, head_m=cfg.head.m)
    state = init_state(method, cfg.method, variables, head_weights, rng)
    if salun: mask = compute_saliency_mask(method, ctx, state, forget_batches, fraction)
              state = init_state(..., saliency_mask=mask)   (or state.replace(opt_state=set_...))
    update = jax.jit(make_update_step(method, cfg.method, ctx), donate_argnums=0)
    state, metrics = update(state, {'forget': {...}, 'retain': {...}})   # keys per data_needs(cfg)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxforget import losses
from jaxforget.methods.saliency import saliency_mask_transform, set_saliency_mask

PyTree = Any
Metrics = dict[str, jax.Array]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear", "step")
BN_MODES = ("train", "frozen")
RETAIN_LOSSES = ("cosface", "distill")
VIEW_POSITIVES = ("identity", "image")
DATA_KEYS = ("forget", "retain")


# --------------------------------------------------------------------------------------------
# Hyper-parameters
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HParams:
    """Every ``method.*`` config field a method reads, with its default.

    Fields absent from the config take the method's own default (:attr:`Method.defaults`), then
    these. Paper values are used where the paper gives them; other values are project choices.
    """

    # Optimiser and schedule.
    optimizer: str = "sgd"            # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9             # sgd only; 0 disables the momentum buffer
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "constant"        # constant | cosine | linear | step
    warmup_steps: int = 0
    steps: int = 1000                 # schedule length (paper: 1,000 iterations)
    step_boundaries: tuple[float, ...] = (0.5, 0.75)   # 'step': fractions of `steps`
    step_factor: float = 0.1          # 'step': lr multiplier at each boundary
    clip_norm: float = 0.0            # 0: no clipping
    # Model behaviour.
    bn_mode: str = "train"            # train | frozen
    flip: bool = True                 # random horizontal flip on device (paper's only augmentation)
    # Dispersion.
    margin: float = 0.0               # m_d (paper's value lost; 0 = push positives to orthogonal)
    augmented_views: bool = False     # disp / hard_disp over augmented views (beyond the paper)
    num_views: int = 2
    view_positives: str = "identity"  # identity | image (see losses.multiview_dispersion_loss)
    view_crop: float = 0.1            # max translation of a view, as a fraction of the image side
    view_jitter: float = 0.2          # brightness / contrast jitter strength of a view
    # Retain term, added to any method's loss (finetune / retrain / contrastive use retain CosFace
    # as their own loss instead).
    retain_weight: float = 0.0        # lambda; 0: no retain data needed
    retain_loss: str = "cosface"      # cosface (CosFace on retain) | distill (to frozen original)
    # What trains (beyond the paper): '' = the whole backbone; else a regular expression searched
    # in each '/'-joined parameter / BatchNorm-statistic path (see trainable_mask).
    trainable: str = ""
    # SalUn.
    salun_fraction: float = 0.0       # 0: off; else keep this top fraction of weight elements
    # Identity-subspace projection (see ``projection.py``): remove the forget identities' centroid
    # directions from the embedding before training (always on for the closed-form ``project``).
    # The map is exact for eval-mode BatchNorm; training with bn_mode='train' normalises the last
    # layer by batch statistics, which partly undoes it during training.
    project: bool = False
    # Baselines.
    rl_exclude_true: bool = False     # RL: draw random labels among the other C-1 classes
    bs_eps: float = 4.0 / 255.0       # BS: FGSM step, normalised-pixel units (~2 grey levels)
    lipschitz_sigma: float = 0.1      # LU: noise std, normalised-pixel units
    lipschitz_draws: int = 4          # LU: noise draws per image
    contrastive_temperature: float = 0.1  # CU: softmax temperature

    def __post_init__(self):
        def bad(field, value, allowed):
            return ValueError(f"config method.{field}={value!r} is not supported; use one of "
                              f"{allowed}.")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise bad("schedule", self.schedule, SCHEDULES)
        if self.bn_mode not in BN_MODES:
            raise bad("bn_mode", self.bn_mode, BN_MODES)
        if self.retain_loss not in RETAIN_LOSSES:
            raise bad("retain_loss", self.retain_loss, RETAIN_LOSSES)
        if self.view_positives not in VIEW_POSITIVES:
            raise bad("view_positives", self.view_positives, VIEW_POSITIVES)
        try:
            re.compile(self.trainable)
        except re.error as e:
            raise ValueError(f"config method.trainable={self.trainable!r} is not a valid regular "
                             f"expression ({e}); use e.g. 'linear1/' or '' (whole backbone).")
        checks = [
            ("lr", self.lr >= 0, ">= 0"), ("steps", self.steps >= 1, ">= 1"),
            ("warmup_steps", 0 <= self.warmup_steps, ">= 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("clip_norm", self.clip_norm >= 0, ">= 0 (0 disables clipping)"),
            ("salun_fraction", 0.0 <= self.salun_fraction <= 1.0, "in [0, 1] (0 disables)"),
            ("retain_weight", self.retain_weight >= 0, ">= 0"),
            ("num_views", self.num_views >= 2, ">= 2"),
            ("lipschitz_draws", self.lipschitz_draws >= 1, ">= 1"),
            ("lipschitz_sigma", self.lipschitz_sigma > 0, "> 0"),
            ("contrastive_temperature", self.contrastive_temperature > 0, "> 0"),
            ("bs_eps", self.bs_eps >= 0, ">= 0"),
        ]
        for field, ok, rule in checks:
            if not ok:
                raise ValueError(f"config method.{field}={getattr(self, field)!r} must be {rule}.")


_HPARAM_FIELDS = {f.name: f for f in dataclasses.fields(HParams)}


def _cfg_get(cfg: Any, key: str) -> tuple[bool, Any]:
    if cfg is None:
        return False, None
    try:
        if key in cfg:
            return True, cfg[key]
    except TypeError:
        pass
    if hasattr(cfg, key) and not isinstance(cfg, Mapping):
        return True, getattr(cfg, key)
    return False, None


def resolve_hparams(method_cfg: Any, method: "Method | None" = None) -> HParams:
    """:class:`HParams` from a config (ConfigDict, dict, dataclass or None) and method defaults.

    Unknown config fields are ignored (the runner's ``config.method`` also holds data fields such
    as ``batch_size``); known ones are converted to the field's type.
    """
    values = dict(method.defaults) if method is not None else {}
    for name in _HPARAM_FIELDS:
        found, value = _cfg_get(method_cfg, name)
        if found and value is not None:
            values[name] = value
    out = {}
    for name, value in values.items():
        default = _HPARAM_FIELDS[name].default
        try:
            if isinstance(default, bool):
                out[name] = bool(value)
            elif isinstance(default, int):
                if float(value) != int(value):
                    raise ValueError
                out[name] = int(value)
            elif isinstance(default, float):
                out[name] = float(value)
            elif isinstance(default, tuple):
                out[name] = tuple(float(v) for v in value)
            else:
                out[name] = str(value)
        except (TypeError, ValueError):
            raise ValueError(f"config method.{name}={value!r}: expected a "
                             f"{type(default).__name__} like {default!r}.") from None
    hp = HParams(**out)
    if method is not None and not method.generic_retain and hp.retain_loss != "cosface":
        raise ValueError(f"config method.retain_loss={hp.retain_loss!r}: method {method.name!r} "
                         "has its own retain term (CosFace on retain samples); retain_loss "
                         "applies to the methods with the generic retain term.")
    return hp


# --------------------------------------------------------------------------------------------
# State, context, method record
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
    """The whole mutable training state: a plain pytree, donated to the jitted update.

    Fields: ``step`` (int32 scalar), ``params`` (backbone parameters), ``batch_stats`` (BatchNorm
    running statistics, or None), ``head`` (CosFace class weights ``(C, d)`` or None),
    ``opt_state`` (optax state over :func:`trainable_tree`, holding the SalUn mask when enabled),
    ``rng`` (PRNG key, split every step), ``frozen`` (the original model's variables for Boundary
    Shrink and distillation -- None when the method does not need them). The frozen copy lives in
    the state, not the context, so it is an input of the jitted step rather than a constant
    compiled into it.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    head: jax.Array | None
    opt_state: PyTree
    rng: jax.Array
    frozen: PyTree = None


@flax.struct.dataclass
class Context:
    """Static things the update step closes over (nothing here is traced).

    ``apply_fn(variables, x, train=..., mutable=..., rngs=...)``: the backbone's
    ``module.apply`` (normalised float NHWC in, unnormalised embeddings out; with ``train=True``
    and ``mutable=['batch_stats']`` it returns ``(emb, {'batch_stats': ...})``).
    ``pixel_mean`` / ``pixel_std``: the model's normalisation constants. ``num_classes``: rows of
    the head. ``head_kind`` / ``head_s`` / ``head_m``: the margin loss (``config.head``).
    """

    apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
    pixel_mean: float = flax.struct.field(pytree_node=False, default=127.5)
    pixel_std: float = flax.struct.field(pytree_node=False, default=127.5)
    num_classes: int = flax.struct.field(pytree_node=False, default=0)
    head_kind: str = flax.struct.field(pytree_node=False, default="cosface")
    head_s: float = flax.struct.field(pytree_node=False, default=64.0)
    head_m: float = flax.struct.field(pytree_node=False, default=0.4)


LossFn = Callable[["Forward", jax.Array | None, Mapping[str, Any], jax.Array, HParams, Context],
                  tuple[jax.Array, Metrics]]


@dataclasses.dataclass(frozen=True, eq=False)
class Method:
    """An unlearning method: its loss, the data it needs, and which parts of the model it trains.

    ``loss(fwd, head, batch, rng, hp, ctx) -> (loss, metrics)`` where ``fwd`` embeds images with
    the trained model (see :class:`Forward`), ``head`` is the head weights (a traced trainable
    when :attr:`trains_head`), ``batch`` the device batch (images still uint8), ``rng`` a fresh key.
    ``needs``: data the loss always reads; :meth:`data_needs` adds ``'retain'`` when the config
    turns on the generic retain term. ``defaults``: the method's recommended config values,
    applied to fields the config does not set.
    """

    name: str
    needs: tuple[str, ...]
    loss: LossFn
    description: str
    trains_head: bool = False
    uses_head: bool = True
    generic_retain: bool = True
    needs_frozen: bool = False
    closed_form: bool = False  # no training: the runner skips the update loop (``project``)
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def data_needs(self, method_cfg: Any = None) -> tuple[str, ...]:
        """The batch keys the update step reads under this config."""
        hp = resolve_hparams(method_cfg, self)
        needs = set(self.needs)
        if self.generic_retain and hp.retain_weight > 0:
            needs.add("retain")
        return tuple(k for k in DATA_KEYS if k in needs)

    def uses_frozen(self, method_cfg: Any = None) -> bool:
        """Whether the update needs the frozen original model (``TrainState.frozen``)."""
        hp = resolve_hparams(method_cfg, self)
        distill = (self.generic_retain and hp.retain_weight > 0 and hp.retain_loss == "distill")
        return self.needs_frozen or distill

    def default_config(self) -> ml_collections.ConfigDict:
        """Every field of :class:`HParams` with this method's defaults, plus ``name``."""
        hp = resolve_hparams(None, self)
        d = dataclasses.asdict(hp)
        d["name"] = self.name
        return ml_collections.ConfigDict(d)


# --------------------------------------------------------------------------------------------
# Forward passes
# --------------------------------------------------------------------------------------------


def normalize_images(images: jax.Array, ctx: Context) -> jax.Array:
    """uint8 (or float 0..255) NHWC images to the model's normalised float32 input."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be NHWC RGB (B, H, W, 3), got shape {images.shape}.")
    return (images.astype(jnp.float32) - ctx.pixel_mean) / ctx.pixel_std


def pixel_range(ctx: Context) -> tuple[float, float]:
    """The normalised values of pixel 0 and 255 (the valid input range)."""
    return ((0.0 - ctx.pixel_mean) / ctx.pixel_std, (255.0 - ctx.pixel_mean) / ctx.pixel_std)


def random_flip(rng: jax.Array, x: jax.Array) -> jax.Array:
    """Flips each image of an NHWC batch left-right with probability 1/2."""
    flip = jax.random.bernoulli(rng, 0.5, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


class Forward:
    """Embeds images with the trained model inside the loss, threading BatchNorm statistics.

    Each call in ``bn_mode='train'`` runs the model in train mode and keeps the returned running
    statistics for the next call (several forward passes in one step update them in sequence, as
    PyTorch would); in ``'frozen'`` mode the model runs in eval mode. ``frozen_embed`` runs the
    frozen original (eval mode, no gradient). Built only while tracing a step.
    """

    def __init__(self, ctx: Context, params: PyTree, batch_stats: PyTree, train_bn: bool,
                 rng: jax.Array, flip: bool, frozen: PyTree = None):
        self.ctx = ctx
        self.params = params
        self.batch_stats = batch_stats
        self.train_bn = train_bn
        self.flip = flip
        self.frozen = frozen
        self._rng = rng
        self._calls = 0

    def next_rng(self) -> jax.Array:
        self._calls += 1
        return jax.random.fold_in(self._rng, self._calls)

    def prepare(self, images: jax.Array) -> jax.Array:
        """Normalises uint8 images and applies the random flip when enabled."""
        x = normalize_images(images, self.ctx)
        return random_flip(self.next_rng(), x) if self.flip else x

    def embed(self, x: jax.Array) -> jax.Array:
        """Raw (unnormalised) float32 embeddings of normalised images ``x``."""
        variables = {"params": self.params}
        if self.batch_stats is not None:
            variables["batch_stats"] = self.batch_stats
        if self.train_bn:
            z, updates = self.ctx.apply_fn(variables, x, train=True, mutable=["batch_stats"],
                                           rngs={"dropout": self.next_rng()})
            if self.batch_stats is not None:
                self.batch_stats = updates.get("batch_stats", self.batch_stats)
        else:
            z = self.ctx.apply_fn(variables, x, train=False)
        return z.astype(jnp.float32)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Raw float32 embeddings of a uint8 batch (normalised and flipped first)."""
        return self.embed(self.prepare(images))

    def frozen_embed(self, x: jax.Array) -> jax.Array:
        """Embeddings of normalised images under the frozen original (eval mode, no gradient)."""
        if self.frozen is None:
            raise ValueError("this method needs the frozen original model, but state.frozen is "
                             "None; build the state with init_state (it fills state.frozen).")
        frozen = jax.lax.stop_gradient(self.frozen)
        return self.ctx.apply_fn(frozen, x, train=False).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------------


def make_schedule(hp: HParams) -> optax.Schedule:
    """The learning-rate schedule of :class:`HParams` (warm-up, then constant/cosine/linear/step)."""
    warm = min(hp.warmup_steps, hp.steps)
    rest = max(hp.steps - warm, 1)
    if hp.schedule == "constant":
        main = optax.constant_schedule(hp.lr)
    elif hp.schedule == "cosine":
        main = optax.cosine_decay_schedule(hp.lr, rest)
    elif hp.schedule == "linear":
        main = optax.linear_schedule(hp.lr, 0.0, rest)
    else:
        # Boundaries are fractions of all steps; the main schedule counts from the end of the
        # warm-up. A boundary inside the warm-up applies from its end; boundaries that round to
        # the same step multiply.
        scales: dict[int, float] = {}
        for f in hp.step_boundaries:
            b = max(int(round(f * hp.steps)) - warm, 0)
            scales[b] = scales.get(b, 1.0) * hp.step_factor
        main = optax.piecewise_constant_schedule(hp.lr * scales.pop(0, 1.0), scales)
    if warm == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, hp.lr, warm), main], [warm])


def make_optimizer(hp: HParams) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain described in the module docstring, and its schedule."""
    schedule = make_schedule(hp)
    links = []
    if hp.clip_norm > 0:
        links.append(optax.clip_by_global_norm(hp.clip_norm))
    if hp.optimizer == "sgd":
        if hp.weight_decay > 0:
            links.append(optax.add_decayed_weights(hp.weight_decay))
        if hp.momentum > 0:
            links.append(optax.trace(decay=hp.momentum, nesterov=hp.nesterov))
    elif hp.optimizer == "adam":
        if hp.weight_decay > 0:
            links.append(optax.add_decayed_weights(hp.weight_decay))
        links.append(optax.scale_by_adam())
    else:  # adamw
        links.append(optax.scale_by_adam())
        if hp.weight_decay > 0:
            links.append(optax.add_decayed_weights(hp.weight_decay))
    links.append(optax.scale_by_learning_rate(schedule))
    if hp.trainable:
        links.append(_freeze_transform(hp.trainable))
    if hp.salun_fraction > 0:
        links.append(saliency_mask_transform())
    return optax.chain(*links), schedule


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def trainable_mask(pattern: str, tree: PyTree) -> PyTree:
    """Python bools shaped like ``tree`` (backbone ``params`` or ``batch_stats``): True where the
    leaf's '/'-joined path (``'linear1/conv/kernel'``) contains a match of ``pattern``."""
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(_path_str(p))), tree)


def trainable_leaves(pattern: str, tree: Mapping[str, PyTree]) -> dict[str, PyTree]:
    """:func:`trainable_mask` over a :func:`trainable_tree`-shaped dict: the backbone ``'params'``
    follow ``pattern``; the head, when trained, always trains."""
    return {k: (trainable_mask(pattern, v) if k == "params" else jax.tree.map(lambda _: True, v))
            for k, v in tree.items()}


def check_trainable(pattern: str, params: PyTree) -> None:
    """Raises when ``method.trainable`` matches no backbone parameter (the run would train
    nothing); the message lists the model's top-level modules."""
    if pattern and not any(jax.tree.leaves(trainable_mask(pattern, params))):
        example = _path_str(jax.tree_util.tree_leaves_with_path(params)[-1][0])
        raise ValueError(f"config method.trainable={pattern!r} matches no backbone parameter. "
                         f"Paths look like '{example}'; top-level modules: "
                         f"{', '.join(sorted(params))}.")


def _freeze_transform(pattern: str) -> optax.GradientTransformation:
    """Sets the final update of every backbone leaf that ``pattern`` does not match to ``-0.0``
    (``p + -0.0 == p`` bit for bit); the head, when trained, is never frozen by it."""

    def update_fn(updates, state, params=None):
        del params
        keep = trainable_leaves(pattern, updates)
        return jax.tree.map(lambda u, m: u if m else jnp.full_like(u, -0.0), updates, keep), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _frozen_where(pattern: str, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where ``pattern`` matches the leaf's path, else ``old`` (no-op for '')."""
    if not pattern or new is None:
        return new
    return jax.tree.map(lambda m, a, b: a if m else jax.lax.stop_gradient(b),
                        trainable_mask(pattern, new), new, old)


def trainable_tree(method: Method, state: TrainState) -> dict[str, PyTree]:
    """What the optimiser updates: ``{'params': backbone}`` (+ ``'head'`` when the method trains it)."""
    tree = {"params": state.params}
    if method.trains_head:
        tree["head"] = state.head
    return tree


def init_state(method: Method, method_cfg: Any, variables: Mapping[str, PyTree],
               head_weights: jax.Array | None, rng: jax.Array,
               saliency_mask: PyTree | None = None) -> TrainState:
    """A fresh :class:`TrainState` for ``method`` starting from the original model.

    Args:
      method: from :func:`jaxforget.methods.get_method`.
      method_cfg: ``config.method`` (fields of :class:`HParams`).
      variables: the original model's ``{'params': ..., 'batch_stats': ...}``.
      head_weights: CosFace class weights ``(C, d)``; required by methods that use the head.
      rng: PRNG key for the whole run.
      saliency_mask: SalUn mask from :func:`compute_saliency_mask` (needs ``salun_fraction > 0``);
        shaped like the backbone params, or like ``{'params', 'head'}`` for head-training methods.

    Arrays are copied, so the caller's ``variables`` stay usable after the state is donated;
    ``frozen`` gets its own copy of ``variables`` when the method needs the original model.
    """
    hp = resolve_hparams(method_cfg, method)
    if "params" not in variables:
        raise ValueError("init_state: variables must be a flax dict with a 'params' entry, got "
                         f"keys {sorted(variables)}.")
    retain_cosface = (method.generic_retain and hp.retain_weight > 0
                      and hp.retain_loss == "cosface")
    if (method.uses_head or retain_cosface) and head_weights is None:
        raise ValueError(f"init_state: method '{method.name}' uses the CosFace head under this "
                         "config, but head_weights is None; pass the (num_classes, d) class "
                         "weights.")
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    params = copy(variables["params"])
    batch_stats = copy(variables.get("batch_stats")) if "batch_stats" in variables else None
    head = None if head_weights is None else jnp.array(head_weights, jnp.float32, copy=True)
    frozen = copy(dict(variables)) if method.uses_frozen(method_cfg) else None
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       head=head, opt_state=None, rng=rng, frozen=frozen)
    check_trainable(hp.trainable, params)
    tx, _ = make_optimizer(hp)
    trainable = trainable_tree(method, state)
    opt_state = tx.init(trainable)
    if saliency_mask is not None:
        if hp.salun_fraction <= 0:
            raise ValueError("init_state: a saliency_mask was given but method.salun_fraction is "
                             "0; set it to the fraction the mask was computed with.")
        if method.trains_head and not (isinstance(saliency_mask, Mapping)
                                       and "head" in saliency_mask):
            saliency_mask = {"params": saliency_mask, "head": jnp.ones(head.shape, bool)}
        elif not method.trains_head and not (isinstance(saliency_mask, Mapping)
                                             and set(saliency_mask) == {"params"}):
            saliency_mask = {"params": saliency_mask}
        opt_state = set_saliency_mask(opt_state, saliency_mask)
    return state.replace(opt_state=opt_state)


# --------------------------------------------------------------------------------------------
# Update step
# --------------------------------------------------------------------------------------------


def _check_batch(method: Method, needs: tuple[str, ...], batch: Mapping[str, Any]) -> None:
    for key in needs:
        if key not in batch:
            raise ValueError(
                f"method '{method.name}' needs batch['{key}'] (it reads {needs} under this "
                f"config), but the batch has keys {sorted(batch)}. Feed a {key} batch "
                "{'image': uint8 (B,H,W,3), 'label': int32 (B,)}.")
        part = batch[key]
        if "image" not in part or "label" not in part:
            raise ValueError(f"batch['{key}'] must hold 'image' and 'label', got keys "
                             f"{sorted(part)}.")
        img, lab = part["image"], part["label"]
        if img.ndim != 4 or img.shape[-1] != 3 or lab.shape != (img.shape[0],):
            raise ValueError(f"batch['{key}']: image must be (B, H, W, 3) and label (B,), got "
                             f"{img.shape} and {lab.shape}.")


def retain_term(fwd: Forward, head: jax.Array | None, retain: Mapping[str, Any], hp: HParams,
                ctx: Context) -> jax.Array:
    """CosFace on retain samples (``retain_loss='cosface'``) or distillation of their embeddings
    to the frozen original's (``'distill'``)."""
    x = fwd.prepare(retain["image"])
    z = fwd.embed(x)
    mask = retain.get("mask")
    if hp.retain_loss == "cosface":
        return losses.margin_loss(z, head, retain["label"], ctx.head_s, ctx.head_m,
                                  ctx.head_kind, mask)
    return losses.embedding_distillation_loss(z, fwd.frozen_embed(x), mask)


def make_update_step(method: Method, method_cfg: Any, ctx: Context
                     ) -> Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, Metrics]]:
    """The pure update ``update(state, batch) -> (state, metrics)`` for ``method``.

    Jit it with ``donate_argnums=0``. ``batch`` holds ``'forget'`` and/or ``'retain'`` dicts of
    ``{'image': uint8 NHWC, 'label': int32, optional 'mask': bool}`` (see
    :meth:`Method.data_needs`); images are normalised (and randomly flipped when ``flip``) on
    device. Works unchanged with a batch sharded over devices and replicated parameters.

    ``metrics``: ``loss`` (total), ``grad_norm`` (global norm of the raw gradient), ``lr``
    (learning rate used for this step), plus the method's own scalars (and ``retain_loss`` when the
    generic retain term is on).
    """
    if method.closed_form:
        raise ValueError(f"method {method.name!r} is closed-form: it has no update step (the "
                         "runner applies it without training)")
    hp = resolve_hparams(method_cfg, method)
    needs = method.data_needs(method_cfg)
    tx, schedule = make_optimizer(hp)
    with_retain = method.generic_retain and hp.retain_weight > 0

    def update(state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, Metrics]:
        _check_batch(method, needs, batch)
        rng, loss_rng, fwd_rng = jax.random.split(state.rng, 3)
        trainable = trainable_tree(method, state)

        def objective(tr):
            # Leaves outside method.trainable enter as constants: XLA drops their backward pass.
            params = _frozen_where(hp.trainable, tr["params"], tr["params"])
            fwd = Forward(ctx, params, state.batch_stats, hp.bn_mode == "train", fwd_rng,
                          hp.flip, state.frozen)
            head = tr.get("head", state.head)
            loss, metrics = method.loss(fwd, head, batch, loss_rng, hp, ctx)
            metrics = dict(metrics)
            if with_retain:
                r = retain_term(fwd, head, batch["retain"], hp, ctx)
                metrics["retain_loss"] = r
                loss = loss + hp.retain_weight * r
            return loss, (metrics, fwd.batch_stats)

        (loss, (metrics, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            trainable)
        batch_stats = _frozen_where(hp.trainable, batch_stats, state.batch_stats)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        new = optax.apply_updates(trainable, updates)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        metrics.update(loss=loss, grad_norm=optax.tree.norm(grads),
                       lr=jnp.asarray(schedule(state.step), jnp.float32))
        new_state = state.replace(
            step=state.step + 1, params=new["params"], head=new.get("head", state.head),
            batch_stats=batch_stats, opt_state=opt_state, rng=rng)
        return new_state, metrics

    return update


def forget_valid(part: Mapping[str, Any]) -> jax.Array | None:
    """The optional padding mask of a batch part."""
    m = part.get("mask")
    return None if m is None else jnp.asarray(m, bool)
