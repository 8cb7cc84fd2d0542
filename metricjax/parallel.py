"""Device mesh, shardings and global-batch assembly for data parallelism.

Everything is written over the global batch: a jitted function whose batch
argument carries `batch_sharding(mesh)` runs data-parallel over every device
of every host, and in-batch negatives span all devices.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from metricjax.errors import UserError

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Joins the multi-host job (Cloud TPU, SLURM, ... are auto-detected)."""
  jax.distributed.initialize()


def create_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(
        f"{field}={batch_size} does not split evenly over the {n} devices of "
        f"the mesh. Choose a multiple of {n} (e.g. --{field}="
        f"{max(n, batch_size // n * n)}).")


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """This process's rows of a batch -> one global array sharded on "data".

  Each process passes its own slice; a single process passes the whole batch.
  """
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def replicate(tree, mesh: Mesh):
  """Puts a host pytree on every device (small datasets, parameters)."""
  return jax.device_put(tree, replicated(mesh))
