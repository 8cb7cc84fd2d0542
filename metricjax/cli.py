"""What the command-line entry points share: the multi-host flag, quiet
logging, and the checks of their arguments."""

import logging as py_logging

from absl import flags
from absl import logging

from metricjax import host_memory
from metricjax import parallel
from metricjax.errors import UserError

FLAGS = flags.FLAGS
# Libraries whose INFO lines (checkpoint saves, compilation notes) would
# scroll the progress bar away; --verbosity=0 shows them again.
_CHATTY = ("absl", "orbax", "jax", "etils", "tensorflow_datasets")


def define_common_flags() -> None:
  flags.DEFINE_bool("distributed", False,
                    "Join a multi-host job (jax.distributed.initialize); "
                    "start the same command on every host.")
  flags.DEFINE_string("coordinator_address", None,
                      "HOST:PORT of process 0, with --distributed; omit to "
                      "auto-detect the cluster (Cloud TPU, SLURM, ...).")
  flags.DEFINE_integer("num_processes", None,
                       "Processes in the job, with --coordinator_address.")
  flags.DEFINE_integer("process_id", None,
                       "This process's index, with --coordinator_address.")
  flags.DEFINE_integer("distributed_timeout", 300,
                       "Seconds to wait for every process to join.")
  flags.DEFINE_bool("keep_freed_memory", True,
                    "Keep freed host memory for reuse (glibc) so that "
                    "XLA:CPU's per-call buffers are not faulted in again "
                    "on every call; the process then holds its peak heap "
                    "(metricjax/host_memory.py).")


def quiet_logging() -> None:
  """Progress bars, warnings and results only, unless --verbosity is given."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
    for name in _CHATTY:
      py_logging.getLogger(name).setLevel(py_logging.WARNING)


def set_up(argv) -> None:
  """Rejects stray arguments, quietens logging, sets up host memory before
  jax's backend starts, joins a multi-host job."""
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {' '.join(argv[1:])}.")
  quiet_logging()
  if FLAGS.keep_freed_memory:
    host_memory.keep_freed_memory()
  if FLAGS.distributed:
    parallel.initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
        timeout_s=FLAGS.distributed_timeout)
  elif FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.process_id:
    raise UserError("--coordinator_address, --num_processes and --process_id "
                    "need --distributed.")
