"""What the command-line entry points share: the multi-host flag, quiet
logging, and the checks of their arguments."""

import logging as py_logging

from absl import flags
from absl import logging

from metricjax import parallel
from metricjax.errors import UserError

FLAGS = flags.FLAGS
# Libraries whose INFO lines (checkpoint saves, compilation notes) would
# scroll the progress bar away; --verbosity=0 shows them again.
_CHATTY = ("absl", "orbax", "jax", "etils", "tensorflow_datasets")


def define_common_flags() -> None:
  flags.DEFINE_bool("distributed", False,
                    "Call jax.distributed.initialize() (multi-host runs).")


def set_up(argv) -> None:
  """Rejects stray arguments, quietens logging, joins a multi-host job."""
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {' '.join(argv[1:])}.")
  if not FLAGS["verbosity"].present:
    # Progress bars, warnings and results only.
    logging.set_verbosity(logging.WARNING)
    for name in _CHATTY:
      py_logging.getLogger(name).setLevel(py_logging.WARNING)
  if FLAGS.distributed:
    parallel.initialize_distributed()
