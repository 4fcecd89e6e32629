"""The one training loop, shared by base-model fine-tuning and every unlearning method.

A phase (``pretrain``, ``unlearn``) runs a jitted ``update(state, batch) -> (state, metrics)`` with
donated state for a fixed number of steps and, along the way:

- saves an orbax checkpoint of the train state, every data iterator and the config every
    ``checkpoint_every`` steps (and at the end) under ``<workdir>/checkpoints/<phase>``;
- resumes automatically from the newest checkpoint when re-run on the same workdir, so an
    interrupted run ends with the same parameters as an uninterrupted one;
- stops with :class:`NonFiniteError` on a non-finite loss or gradient norm, before anything is
    saved, so the last good checkpoint stays on disk;
- writes one JSON line of metrics per logged step to ``<workdir>/metrics_<phase>.jsonl`` (and
    TensorBoard event files when ``tensorboardX`` is installed), and shows progress on stderr.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any, Callable, Mapping

import grain
import jax
import orbax.checkpoint as ocp

from jaxforget import sharding as shd


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class MetricWriter:
    """JSONL metrics, plus TensorBoard events when a light writer (tensorboardX) is installed."""

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
            try:
                from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

                self._tb = SummaryWriter(str(workdir / "tensorboard" / phase))
            except ImportError:
                self._tb = None

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


def _progress(
    phase: str, step: int, total: int, metrics: Mapping[str, float], t0: float, start_step: int
) -> None:
    done = step - start_step
    elapsed = time.perf_counter() - t0
    eta = elapsed / max(done, 1) * (total - step)
    shown = " ".join(
        f"{k}={v:.4g}" for k, v in metrics.items() if k in ("loss", "grad_norm", "lr", "forget_cs")
    )
    print(
        f"[{phase}] step {step}/{total} {shown} ({elapsed:.0f}s, eta {eta:.0f}s)",
        file=sys.stderr,
        flush=True,
    )


def _is_finite(x: float) -> bool:
    return math.isfinite(float(x))


def train_loop(
    *,
    phase: str,
    state: Any,
    update_fn: Callable[[Any, Any], tuple[Any, Mapping[str, jax.Array]]],
    iterators: Mapping[str, Any],
    workdir: str | pathlib.Path,
    steps: int,
    mesh: jax.sharding.Mesh,
    checkpoint_every: int = 100,
    log_every: int = 10,
    config_dict: Mapping[str, Any] | None = None,
    hook: Callable[[int, Any], Mapping[str, float]] | None = None,
    hook_every: int = 0,
    stop_after: int | None = None,
) -> Any:
    """Runs ``steps`` updates of ``update_fn`` (already jitted, state donated) and returns the state.

    ``iterators`` maps batch keys (``forget``, ``retain``, ``train``) to checkpointable grain
    iterators; each step takes one batch from each. ``hook(step, state)`` runs every
    ``hook_every`` steps (for instance the forget-set compactness) and its values are logged.
    ``stop_after`` ends the loop early after that many steps of this call (tests use it to
    simulate an interruption); the checkpoint written at that point lets a re-run resume.
    """
    workdir = pathlib.Path(workdir).resolve()
    ckpt_dir = workdir / "checkpoints" / phase
    iter_names = tuple(f"iter_{k}" for k in iterators)
    manager = ocp.CheckpointManager(
        ckpt_dir,
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
        item_names=("state", "config", *iter_names),
    )
    start = 0
    latest = manager.latest_step()
    if latest is not None:
        restore_args = {"state": ocp.args.StandardRestore(state)}
        for key, it in iterators.items():
            restore_args[f"iter_{key}"] = grain.checkpoint.CheckpointRestore(it)
        restored = manager.restore(latest, args=ocp.args.Composite(**restore_args))
        state = restored["state"]
        start = int(latest)
        print(
            f"[{phase}] resuming from the checkpoint at step {start} in {ckpt_dir}",
            file=sys.stderr,
            flush=True,
        )

    def save(step: int) -> None:
        args = {
            "state": ocp.args.StandardSave(state),
            "config": ocp.args.JsonSave(dict(config_dict or {})),
        }
        for key, it in iterators.items():
            args[f"iter_{key}"] = grain.checkpoint.CheckpointSave(it)
        manager.save(step, args=ocp.args.Composite(**args))

    writer = MetricWriter(workdir, phase, resume_step=start) if shd.is_primary() else None
    t0 = time.perf_counter()
    end = steps if stop_after is None else min(steps, start + stop_after)
    try:
        for step in range(start, end):
            t_data = time.perf_counter()
            host_batch = {k: next(it) for k, it in iterators.items()}
            batch = shd.shard_batch(host_batch, mesh)
            t_step = time.perf_counter()
            state, metrics = update_fn(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            t_end = time.perf_counter()
            bad = [k for k in ("loss", "grad_norm") if k in metrics and not _is_finite(metrics[k])]
            if bad:
                last = manager.latest_step()
                kept = (f"the last good checkpoint (step {last}) is kept in {ckpt_dir}" if last
                        is not None else "no checkpoint had been written yet, so a re-run starts "
                        "over")
                raise NonFiniteError(
                    f"[{phase}] step {step + 1}: non-finite {', '.join(f'{k}={metrics[k]}' for k in bad)}."
                    f" Training stopped; {kept}. Lower method.lr or set method.clip_norm and run"
                    " again in a new --workdir (this one keeps the old settings).")
            metrics["step_time_s"] = t_end - t_step
            metrics["data_wait_s"] = t_step - t_data
            if hook is not None and hook_every and (step + 1) % hook_every == 0:
                metrics.update(hook(step + 1, state))
            if writer is not None and ((step + 1) % log_every == 0 or step + 1 == end
                                       or step == start):
                writer.write(step + 1, metrics)
                _progress(phase, step + 1, steps, metrics, t0, start)
            if (step + 1) % checkpoint_every == 0 or step + 1 == end:
                save(step + 1)
    finally:
        manager.wait_until_finished()
        manager.close()
        if writer is not None:
            writer.close()
    return state


def latest_checkpoint_step(workdir: str | pathlib.Path, phase: str) -> int | None:
    path = pathlib.Path(workdir).resolve() / "checkpoints" / phase
    if not path.exists():
        return None
    steps = [int(p.name) for p in path.iterdir() if p.name.isdigit()]
    return max(steps) if steps else None
