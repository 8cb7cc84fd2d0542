"""Device mesh, shardings and global-batch assembly for data parallelism.

Everything is written over the global batch: a jitted function whose batch
argument carries `batch_sharding(mesh)` runs data-parallel over every device
of every host, and in-batch negatives span all devices.
"""

import hashlib
import socket
import time

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from metricjax.errors import one_line
from metricjax.errors import UserError

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           timeout_s: int = 300) -> None:
  """Joins a multi-host job: one call per process, before any computation.

  Without an address, JAX detects the cluster (Cloud TPU, SLURM, Open MPI,
  ...). On CPU, processes exchange data through gloo collectives.
  """
  given = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in given) and any(v is None for v in given):
    raise UserError(
        "--coordinator_address, --num_processes and --process_id go together "
        "(or give none of them to auto-detect the cluster).")
  if num_processes is not None:
    if num_processes < 1:
      raise UserError(f"--num_processes={num_processes} must be >= 1.")
    if not 0 <= process_id < num_processes:
      raise UserError(f"--process_id={process_id} is out of range: with "
                      f"--num_processes={num_processes} it must be in "
                      f"0..{num_processes - 1}.")
  if coordinator_address and process_id:
    # JAX aborts the process (no exception) when it cannot register with
    # the coordinator; find out first, with a message that says what to do.
    _wait_for_coordinator(coordinator_address, timeout_s)
  # The CPU backend has no collectives across processes unless told which;
  # GPU and TPU backends ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=timeout_s)
  except Exception as e:  # XlaRuntimeError, ValueError, RuntimeError, ...
    where = (f"coordinator {coordinator_address}" if coordinator_address
             else "the auto-detected cluster")
    raise UserError(
        f"Could not join the multi-host job ({where}, process {process_id} of "
        f"{num_processes}) within {timeout_s} s: {type(e).__name__}: "
        f"{one_line(e)}. Check that process 0 runs and listens on that "
        "address, that every process got the same --num_processes, and "
        "that no firewall blocks the port.") from e


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
  host, sep, port = address.rpartition(":")
  if not sep or not port.isdigit():
    raise UserError(f"--coordinator_address={address!r} is not HOST:PORT.")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise UserError(
            f"The coordinator {address} did not answer within {timeout_s} s "
            f"({e}). Start process 0 (the coordinator) with the same "
            "--coordinator_address, check the host and port, and that no "
            "firewall blocks it; --distributed_timeout sets the wait.") from None
      time.sleep(0.5)


def check_same_everywhere(value: str, what: str) -> None:
  """Refuses to go on when the processes of a job disagree on `value` (e.g.
  their configs): they would compute different programs and hang."""
  if jax.process_count() == 1:
    return
  digest = np.frombuffer(hashlib.sha256(value.encode()).digest(), np.uint8)
  everyone = multihost_utils.process_allgather(digest)
  differ = [i for i, d in enumerate(everyone) if not np.array_equal(d, digest)]
  if differ:
    raise UserError(
        f"The processes of this job were started with different {what} "
        f"(process {jax.process_index()} differs from process(es) "
        f"{', '.join(map(str, differ))}). Start every process with the same "
        "command line.")


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is True on any (e.g. a SIGTERM that
  reached the processes of a job between two different steps): they must
  agree, or one waits forever in the next collective."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


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
    hosts = (f" ({jax.process_count()} processes x "
             f"{jax.local_device_count()} devices)"
             if jax.process_count() > 1 else "")
    raise UserError(
        f"{field}={batch_size} does not split evenly over the {n} devices of "
        f"the mesh{hosts}. Choose a multiple of {n} (e.g. --{field}="
        f"{max(n, batch_size // n * n)}).")


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """This process's rows of a batch -> one global array sharded on "data".

  Each process passes its own slice; a single process passes the whole batch.
  """
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def replicate(tree, mesh: Mesh):
  """Puts a host pytree on every device (small datasets, parameters)."""
  return jax.device_put(tree, replicated(mesh))
