r"""Evaluation CLI: checkpoint -> metrics.

  python -m metricjax.evaluate --workdir=DIR [--step=N | --select=val_rsum]
      [--split=test]

Restores the checkpoint with the config and dataset description saved in it,
embeds the evaluation split, and writes DIR/eval/step_N.json (metrics,
num_params, param_bytes, dataset and split sizes, step, config) plus a table
on stdout.
"""

import os

import jax
from absl import app
from absl import flags

from metricjax import cli
from metricjax import files
from metricjax import models
from metricjax import restore as restore_lib
from metricjax.errors import UserError, exit_on_user_error, parse_flags_or_exit

FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("workdir", None, "A directory written by metricjax.train.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("select", None,
                      "Evaluate the checkpoint with the best logged value of "
                      "this metric instead, e.g. val_rsum (model selection "
                      "on validation).")
  flags.DEFINE_string("split", None, "Split to evaluate (default: config.eval_split).")
  cli.define_common_flags()
  flags.mark_flags_as_required(["workdir"])


def format_table(result: dict) -> str:
  ds = result["dataset"]
  splits = ", ".join(f"{k} {v:,}" for k, v in ds["split_sizes"].items())
  model = result["config"]["model"]
  lines = [
      f"workdir     {result['workdir']}  (step {result['step']})",
      f"dataset     {ds['name']}  ({splits}; eval on {ds['eval_split']})",
      f"model       {model.get('name')} {model.get('variant', '')}  "
      f"{result['num_params']:,} params, {result['param_bytes'] / 1e6:.3f} MB",
      "-" * 40,
  ]
  lines += [f"{k:<20}{v:>10.4f}" for k, v in result["metrics"].items()]
  return "\n".join(lines)


def evaluate(workdir: str, step: int | None = None, split: str | None = None) -> dict:
  step, config, meta, task, model, state, mesh = restore_lib.restore(
      workdir, step)
  split = split or config.eval_split
  metrics, dataset = task.evaluate(config, meta, model, state, split, mesh)
  result = dict(
      step=step, workdir=os.path.abspath(workdir), metrics=metrics,
      num_params=models.count_params(state.params),
      param_bytes=models.param_bytes(state.params), dataset=dataset,
      config=config.to_dict())
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "eval", f"step_{step}.json"), result,
                  indent=2)
  return result


@exit_on_user_error
def main(argv):
  cli.set_up(argv)
  if FLAGS.select and FLAGS.step is not None:
    raise UserError("Give --step or --select, not both.")
  step = (restore_lib.best_step(FLAGS.workdir, FLAGS.select) if FLAGS.select
          else FLAGS.step)
  result = evaluate(FLAGS.workdir, step, FLAGS.split)
  if jax.process_index() == 0:
    print(format_table(result))


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)
