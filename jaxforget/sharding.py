"""Data parallelism over every local device with `jax.sharding`.

The batch is split along its leading axis over a one-dimensional mesh axis `data`; parameters,
optimizer state and the rest of the train state are replicated. The losses are ordinary `jnp`
code over the *global* batch, so under `jit` the B x B cosine matrix of the dispersion losses
spans every device: positives on different devices still see each other (XLA inserts the
all-gather). The mesh axis is `Auto` so that `z @ z.T` of a batch-sharded `z` compiles.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_divisible(batch_size: int, mesh: jax.sharding.Mesh, what: str) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the {n} devices of the data-parallel mesh; "
            f"set it to a multiple of {n}."
        )


def shard_batch(batch, mesh: jax.sharding.Mesh):
    """Places a **global** batch (nested dict of numpy arrays, axis 0 = examples) on the mesh,
    split along axis 0.

    Every process holds the whole global batch (the input pipeline is deterministic in its seed,
    so all hosts draw the same one) and places only the rows of its own devices; no example is
    fed twice, and the dispersion positives of one identity may sit on different hosts.
    """
    sharding = batch_sharded(mesh)

    def place(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, batch)


def is_primary() -> bool:
    """True in the process that writes files (process 0; the only one on a single host)."""
    return jax.process_index() == 0


def replicate(tree, mesh: jax.sharding.Mesh):
    return jax.device_put(tree, replicated(mesh))


def maybe_initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
    """Multi-host start-up: `jax.distributed.initialize` when a coordinator is configured.

    On Cloud TPU and SLURM clusters JAX finds the settings itself when `coordinator_address` is
    'auto'. Each host then builds the same global batch and places its own devices' rows of it
    (`shard_batch`); only process 0 writes results, embeddings and logs.
    """
    if not coordinator_address:
        return
    if coordinator_address == "auto":
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
