r"""The cost of a --scale=long run, measured on a few training steps.

Builds a long-scale row's config with its runner's own `_config` (seed 0),
trains --steps steps in a temporary folder and prints one JSON line per
row: the training rate between the last two logs (compilation and
validation excluded), the steps the long run plans, and the estimated
minutes of training it takes at that rate, with the load average.

  python experiments/long_cost.py --runner=compact_involution
  python experiments/long_cost.py --runner=shadow_vs_triplet --steps=100
"""

import importlib.util
import json
import os
import sys
import tempfile

from absl import app
from absl import flags

from metricjax import cli
from metricjax import train

_RUNNER = flags.DEFINE_enum("runner", None, ["compact_involution",
                                             "shadow_vs_triplet"],
                            "The study whose long rows to time.")
_STEPS = flags.DEFINE_integer("steps", 100, "Steps to time (>= 4).")


def _rows(module):
  """[(name, config)] of the runner's long-scale rows (seed 0)."""
  scale = module.SCALES["long"]
  if hasattr(module, "Row"):
    return [(module._name(r), module._config(scale, r, 0))  # pylint: disable=protected-access
            for r in scale["rows"](scale["datasets"])]
  return [(module._name(*k), module._config(scale, *k, 0))  # pylint: disable=protected-access
          for k in module.grid(scale, None) if k[3] == "shadow"]


def main(argv):
  del argv
  cli.quiet_logging()
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      f"{_RUNNER.value}.py")
  spec = importlib.util.spec_from_file_location(_RUNNER.value, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # Defines the runner's flags too.
  flags.FLAGS(sys.argv[:1], known_only=True)
  for name, config in _rows(module):
    planned = config.total_steps
    config.total_steps = _STEPS.value
    config.log_every = config.eval_every = _STEPS.value // 2
    config.checkpoint_every = config.keep_checkpoints = _STEPS.value
    with tempfile.TemporaryDirectory() as workdir:
      train.train(config, workdir)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    print(json.dumps(dict(
        row=name, steps_per_sec=round(last["steps_per_sec"], 2),
        images_per_sec=round(last["examples_per_sec"], 1),
        planned_steps=planned,
        estimated_minutes=round(planned / last["steps_per_sec"] / 60, 1),
        load=[round(x, 2) for x in os.getloadavg()])), flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("runner")
  app.run(main)
