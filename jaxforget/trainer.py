"""The one unlearning recipe: train state, SalUn ranking, jit, and the training loop.

:func:`unlearn` turns an original model into an unlearned one; the runner (base-model
fine-tuning and every method), the studies and the benchmarks call it. It

1. builds the :class:`~jaxforget.methods.TrainState` (``init_state``);
2. when ``salun_fraction > 0`` and there is no checkpoint to resume, ranks the weights by the
   gradient of the method's own ``salun_loss`` over ``saliency_batches`` and builds the state
   again with that SalUn mask (the only place the SalUn loss is chosen: ``Method.salun_loss``);
3. with a ``mesh``: checks that each batch splits over its devices and replicates the state on it
   (``mesh=None``: no sharding, everything on the default device, host batches fed as they are);
4. jits ``make_update_step`` with the state donated and runs ``hparams.steps`` steps of
   :func:`train_loop`, which, with a ``workdir``,

   - saves an orbax checkpoint of the train state, every data iterator and ``config`` every
     ``checkpoint_every`` steps (and at the end) under ``<workdir>/checkpoints/<phase>``;
   - resumes automatically from the newest checkpoint when re-run on the same workdir, so an
     interrupted run ends with the same parameters as an uninterrupted one;
   - writes one JSON line of metrics per logged step to ``<workdir>/metrics_<phase>.jsonl`` (and
     TensorBoard event files), and shows progress on stderr;

   and with ``workdir=None`` writes nothing at all (progress on stderr only with
   ``progress=True``). Either way it stops with :class:`NonFiniteError` on a non-finite loss or
   gradient norm, before anything is saved, so the last good checkpoint stays on disk;
5. returns the variables and head on the host, and every step's metrics.

A complete call (a study on a forget set, no files written)::

    import jax
    from jaxforget import methods, trainer
    from jaxforget.data import pipeline

    method = methods.get_method("hard_disp")
    hp = methods.resolve_hparams({"lr": 1e-3, "steps": 100, "salun_fraction": 0.5}, method)
    ctx = methods.Context(apply_fn=bundle.module.apply, pixel_mean=bundle.pixel_mean,
                          pixel_std=bundle.pixel_std, num_classes=split.num_classes,
                          head_kind="cosface", head_s=64.0, head_m=0.4)

    def forget_batches(seed):  # P x K batches; the update step flips on device
        return iter(pipeline.train_dataset(source, split.forget_train(), identities_per_batch=8,
                                           images_per_identity=4, seed=seed,
                                           label_map=split.class_index, flip=False))

    def salun_batches():  # read only when hp.salun_fraction > 0 and nothing is resumed
        it = forget_batches(2)
        return [next(it) for _ in range(4)]

    cs = {}
    result = trainer.unlearn(
        method, hp, ctx, variables, {"forget": forget_batches(0)}, head=None,
        rng=jax.random.PRNGKey(0), saliency_batches=salun_batches,
        on_step=lambda step, state, m: cs.update({step: my_eval(methods.variables_of(state))})
        if step in (10, 100) else None)
    result.variables   # {'params': ..., 'batch_stats': ...} as host arrays
    result.metrics     # one dict per step: {'step': 1, 'loss': ..., 'grad_norm': ..., 'lr': ...}

The runner's call (:func:`jaxforget.experiment.run_phase`) adds ``workdir=run_dir,
phase='unlearn', mesh=shd.make_mesh(), head=head_weights, hook=cs_hook, hook_every=...,
checkpoint_every=..., log_every=..., config=<the run's config as JSON>`` and
``rng=jax.random.PRNGKey(seed + 1000 * (phase == 'pretrain'))``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX

from jaxforget import methods
from jaxforget import sharding as shd

Record = dict[str, float]


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class UnlearnResult:
    """What :func:`unlearn` returns: the trained ``variables`` (``{'params', 'batch_stats'?}``)
    and ``head`` (None when the run had none) as host arrays, and ``metrics``: one record per
    step this call ran, in order, ``{'step': n, 'loss', 'grad_norm', 'lr', <the method's>,
    'step_time_s', 'data_wait_s', <the hook's>}`` (a resumed run starts after its checkpoint)."""

    variables: dict[str, Any]
    head: np.ndarray | None
    metrics: list[Record]


def unlearn(
    method: methods.Method | str,
    hparams: Any,
    context: methods.Context,
    variables: Mapping[str, Any],
    iterators: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    rng: jax.Array,
    head: Any = None,
    workdir: str | pathlib.Path | None = None,
    phase: str = "unlearn",
    mesh: jax.sharding.Mesh | None = None,
    saliency_batches: Callable[[], Iterable[Mapping[str, Any]]] | Iterable | None = None,
    hook: Callable[[int, Any], Mapping[str, float]] | None = None,
    hook_every: int = 0,
    checkpoint_every: int = 100,
    log_every: int = 10,
    config: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
    on_step: Callable[[int, Any, Record], None] | None = None,
    progress: bool | None = None,
) -> UnlearnResult:
    """Trains ``variables`` with ``method`` for ``hparams.steps`` steps (see the module docstring).

    Args:
      method: a :class:`~jaxforget.methods.Method` or its registered name.
      hparams: :class:`~jaxforget.methods.HParams`, or a config (``config.method``, a dict) that
        :func:`~jaxforget.methods.resolve_hparams` reads.
      context: the :class:`~jaxforget.methods.Context` (model ``apply``, normalisation, margin).
      variables: the original model's ``{'params': ..., 'batch_stats': ...}`` (copied, not
        donated: they stay usable).
      iterators: batch iterators by key; the keys ``method.data_needs(hparams)`` are read, one
        batch each per step (``{'image': uint8 NHWC, 'label': int32, optional 'mask'}``). With a
        ``workdir`` they must be checkpointable grain iterators (``iter(train_dataset(...))``).
      rng: the run's PRNG key (state init, every step's randomness).
      head: CosFace class weights ``(C, d)``, needed by methods that use the head.
      workdir: where checkpoints and metrics go; None writes nothing and never resumes.
      phase: names the checkpoint folder and the metrics file, and prefixes log lines.
      mesh: a data-parallel mesh (``sharding.make_mesh()``): batches split over it, the state
        replicated. None: no sharding, the default device.
      saliency_batches: forget batches for the SalUn ranking, or a function returning them (only
        called when the ranking runs); required when ``salun_fraction > 0``.
      hook: ``hook(step, state) -> metrics`` every ``hook_every`` steps; its values join the
        step's record (the runner's forget-set compactness).
      checkpoint_every, log_every: in steps (checkpoints and JSONL lines; only with a workdir).
      config: JSON-able run config saved with each checkpoint.
      stop_after: end after this many steps of this call (tests simulate an interruption).
      on_step: ``on_step(step, state, record)`` after every step; ``state`` is the live train
        state (``methods.variables_of(state)`` gives the model), valid only during the call: the
        next step donates it.
      progress: progress lines on stderr; default: only with a workdir.
    """
    if isinstance(method, str):
        method = methods.get_method(method)
    hp = methods.resolve_hparams(hparams, method)
    step_fn = methods.make_update_step(method, hp, context)  # raises for closed-form methods
    verbose = (workdir is not None) if progress is None else bool(progress)
    state = methods.init_state(method, hp, variables, head, rng)
    if hp.trainable and verbose:
        sizes = jax.tree.map(np.size, state.params)
        kept = methods.trainable_mask(hp.trainable, sizes)
        n_train = sum(n for n, k in zip(jax.tree.leaves(sizes), jax.tree.leaves(kept)) if k)
        _log(f"[{phase}] method.trainable={hp.trainable!r}: training {n_train:,} of "
             f"{sum(jax.tree.leaves(sizes)):,} backbone parameters")
    start = None if workdir is None else latest_checkpoint_step(workdir, phase)
    if hp.salun_fraction > 0 and start is None:
        # The mask is computed once from the original model; a resumed run restores it with the
        # optimizer state from the checkpoint.
        if saliency_batches is None:
            raise ValueError(f"[{phase}] method.salun_fraction={hp.salun_fraction} needs forget "
                             "batches to rank the weights: pass saliency_batches.")
        if verbose:
            _log(f"[{phase}] SalUn: ranking weights by the forget-loss gradient "
                 f"(keeping {hp.salun_fraction:.0%})")
        batches = saliency_batches() if callable(saliency_batches) else saliency_batches
        mask = methods.compute_saliency_mask(method, context, state, batches, hp.salun_fraction,
                                             method_cfg=hp)
        state = methods.init_state(method, hp, variables, head, rng, saliency_mask=mask)
    needs = method.data_needs(hp)
    missing = [k for k in needs if k not in iterators]
    if missing:
        raise ValueError(f"[{phase}] method {method.name!r} reads {needs} batches under this "
                         f"config; no iterator for {missing} (got {sorted(iterators)}).")
    if mesh is not None:
        state = shd.replicate(state, mesh)
    update = jax.jit(step_fn, donate_argnums=0)
    state, records = train_loop(
        phase=phase, state=state, update_fn=update, iterators={k: iterators[k] for k in needs},
        workdir=workdir, steps=hp.steps, mesh=mesh, checkpoint_every=checkpoint_every,
        log_every=log_every, config_dict=config, hook=hook, hook_every=hook_every,
        stop_after=stop_after, on_step=on_step, progress=verbose)
    return UnlearnResult(jax.device_get(methods.variables_of(state)),
                         jax.device_get(state.head), records)


def train_loop(
    *,
    phase: str,
    state: Any,
    update_fn: Callable[[Any, Any], tuple[Any, Mapping[str, jax.Array]]],
    iterators: Mapping[str, Any],
    workdir: str | pathlib.Path | None,
    steps: int,
    mesh: jax.sharding.Mesh | None,
    checkpoint_every: int = 100,
    log_every: int = 10,
    config_dict: Mapping[str, Any] | None = None,
    hook: Callable[[int, Any], Mapping[str, float]] | None = None,
    hook_every: int = 0,
    stop_after: int | None = None,
    on_step: Callable[[int, Any, Record], None] | None = None,
    progress: bool | None = None,
) -> tuple[Any, list[Record]]:
    """Runs ``steps`` updates of ``update_fn`` (already jitted, state donated).

    Returns the final state and one record per step run. ``iterators`` maps batch keys
    (``forget``, ``retain``) to iterators; each step takes one batch from each, placed on ``mesh``
    (split along the batch axis) or, with ``mesh=None``, fed as it is. Checkpoints, resume and
    metric files as in the module docstring, only when ``workdir`` is given; ``hook``,
    ``stop_after`` and ``on_step`` as in :func:`unlearn`.
    """
    manager, ckpt_dir, start = None, None, 0
    if workdir is not None:
        workdir = pathlib.Path(workdir).resolve()
        ckpt_dir = workdir / "checkpoints" / phase
        manager = ocp.CheckpointManager(
            ckpt_dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
            item_names=("state", "config", *(f"iter_{k}" for k in iterators)),
        )
        latest = manager.latest_step()
        if latest is not None:
            restore_args = {"state": ocp.args.StandardRestore(state)}
            for key, it in iterators.items():
                restore_args[f"iter_{key}"] = grain.checkpoint.CheckpointRestore(it)
            restored = manager.restore(latest, args=ocp.args.Composite(**restore_args))
            state = restored["state"]
            start = int(latest)
            _log(f"[{phase}] resuming from the checkpoint at step {start} in {ckpt_dir}")

    def save(step: int) -> None:
        args = {
            "state": ocp.args.StandardSave(state),
            "config": ocp.args.JsonSave(dict(config_dict or {})),
        }
        for key, it in iterators.items():
            args[f"iter_{key}"] = grain.checkpoint.CheckpointSave(it)
        manager.save(step, args=ocp.args.Composite(**args))

    primary = shd.is_primary()
    writer = (MetricWriter(workdir, phase, resume_step=start)
              if manager is not None and primary else None)
    show = primary and ((workdir is not None) if progress is None else progress)
    records: list[Record] = []
    t0 = time.perf_counter()
    end = steps if stop_after is None else min(steps, start + stop_after)
    try:
        for step in range(start, end):
            t_data = time.perf_counter()
            host_batch = {k: next(it) for k, it in iterators.items()}
            if mesh is None:
                batch = host_batch
            else:
                if step == start:
                    for key, part in host_batch.items():
                        shd.check_divisible(int(np.shape(jax.tree.leaves(part)[0])[0]), mesh,
                                            f"{phase} batch size for '{key}'")
                batch = shd.shard_batch(host_batch, mesh)
            t_step = time.perf_counter()
            state, metrics = update_fn(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            t_end = time.perf_counter()
            bad = [k for k in ("loss", "grad_norm") if k in metrics and not _is_finite(metrics[k])]
            if bad:
                raise NonFiniteError(_non_finite_message(phase, step + 1, metrics, bad, manager,
                                                         ckpt_dir))
            metrics["step_time_s"] = t_end - t_step
            metrics["data_wait_s"] = t_step - t_data
            if hook is not None and hook_every and (step + 1) % hook_every == 0:
                metrics.update(hook(step + 1, state))
            records.append({"step": step + 1, **metrics})
            if on_step is not None:
                on_step(step + 1, state, records[-1])
            if (step + 1) % log_every == 0 or step + 1 == end or step == start:
                if writer is not None:
                    writer.write(step + 1, metrics)
                if show:
                    _progress(phase, step + 1, steps, metrics, t0, start)
            if manager is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == end):
                save(step + 1)
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
        if writer is not None:
            writer.close()
    return state, records


def latest_checkpoint_step(workdir: str | pathlib.Path, phase: str) -> int | None:
    """The newest checkpoint step of ``phase`` under ``workdir`` (None when there is none)."""
    path = pathlib.Path(workdir).resolve() / "checkpoints" / phase
    if not path.exists():
        return None
    steps = [int(p.name) for p in path.iterdir() if p.name.isdigit()]
    return max(steps) if steps else None


class MetricWriter:
    """JSONL metrics, plus TensorBoard event files (tensorboardX)."""

    def __init__(self, workdir: pathlib.Path, phase: str, tensorboard: bool = True,
                 resume_step: int = 0):
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / f"metrics_{phase}.jsonl"
        # A resumed run repeats the steps after its checkpoint: drop their old records, so each
        # step is logged once (and a run restarted from scratch starts a fresh file).
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if int(json.loads(line)["step"]) <= resume_step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from an interruption
        self._file = open(self.path, "w", encoding="utf-8")
        self._file.writelines(kept)
        self._file.flush()
        self._tb = None
        if tensorboard:
            self._tb = tensorboardX.SummaryWriter(str(workdir / "tensorboard" / phase))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _non_finite_message(phase: str, step: int, metrics: Mapping[str, float], bad: list[str],
                        manager, ckpt_dir) -> str:
    values = ", ".join(f"{k}={metrics[k]}" for k in bad)
    if manager is None:
        return (f"[{phase}] step {step}: non-finite {values}. Training stopped; nothing was saved "
                "(no workdir). Lower method.lr or set method.clip_norm.")
    last = manager.latest_step()
    kept = (f"the last good checkpoint (step {last}) is kept in {ckpt_dir}" if last is not None
            else "no checkpoint had been written yet, so a re-run starts over")
    return (f"[{phase}] step {step}: non-finite {values}. Training stopped; {kept}. Lower "
            "method.lr or set method.clip_norm and run again in a new --workdir (this one keeps "
            "the old settings).")


def _progress(phase: str, step: int, total: int, metrics: Mapping[str, float], t0: float,
              start_step: int) -> None:
    done = step - start_step
    elapsed = time.perf_counter() - t0
    eta = elapsed / max(done, 1) * (total - step)
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                     if k in ("loss", "grad_norm", "lr", "forget_cs"))
    _log(f"[{phase}] step {step}/{total} {shown} ({elapsed:.0f}s, eta {eta:.0f}s)")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _is_finite(x: float) -> bool:
    return math.isfinite(float(x))
