r"""Evaluation CLI: checkpoint -> metrics.

  python -m metricjax.evaluate --workdir=DIR [--step=N | --select=val_rsum]
      [--split=test] [--rerank=k_reciprocal|query_expansion [--rerank_k1=20
      --rerank_k2=6 --rerank_lambda=0.3 | --rerank_k=5 --rerank_alpha=3
      --rerank_dba]]

Restores the checkpoint with the config and dataset description saved in it,
embeds the evaluation split, and writes DIR/eval/step_N.json (metrics,
num_params, param_bytes, dataset and split sizes, step, config) plus a table
on stdout. With --rerank (retrieval tasks), the retrieval metrics after
re-ranking (metricjax.rerank) too: the JSON's "reranked" holds the method,
its parameters and the metrics, beside the unchanged "metrics".
"""

import os

import jax
from absl import app
from absl import flags

from metricjax import cli
from metricjax import files
from metricjax import models
from metricjax import rerank as rerank_lib
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
  flags.DEFINE_enum("rerank", None, rerank_lib.METHODS,
                    "Also report the retrieval metrics after re-ranking: "
                    "k-reciprocal encoding (Zhong et al. 2017) or query "
                    "expansion (metricjax.rerank).")
  flags.DEFINE_integer("rerank_k1", 20, "k_reciprocal: k1, the size of the "
                       "k-reciprocal neighbourhoods.")
  flags.DEFINE_integer("rerank_k2", 6, "k_reciprocal: k2, the neighbours of "
                       "the local query expansion (1: none).")
  flags.DEFINE_float("rerank_lambda", 0.3, "k_reciprocal: the weight of the "
                     "original distance beside the Jaccard distance, in [0, 1].")
  flags.DEFINE_integer("rerank_k", 5, "query_expansion: gallery neighbours "
                       "added to each query.")
  flags.DEFINE_float("rerank_alpha", 3.0, "query_expansion: neighbours weigh "
                     "similarity ** alpha (0: average query expansion).")
  flags.DEFINE_bool("rerank_dba", False, "query_expansion: database-side "
                    "augmentation of the gallery first.")
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
  if "reranked" in result:
    rr = result["reranked"]
    params = ", ".join(f"{k}={v}" for k, v in rr["params"].items())
    lines += ["-" * 40, f"reranked: {rr['method']} ({params})",
              f"{'':<20}{'before':>10}{'after':>10}"]
    lines += [f"{k:<20}{result['metrics'][k]:>10.4f}{v:>10.4f}"
              for k, v in rr["metrics"].items()]
  return "\n".join(lines)


def rerank_options(method: str | None, **params) -> dict | None:
  """{"method", "params"} for task.evaluate's rerank, checked (UserError),
  or None without a method. params: k1, k2, lambda_value for k_reciprocal;
  k, alpha, dba for query_expansion (the others are dropped)."""
  if method is None:
    return None
  names = {"k_reciprocal": ("k1", "k2", "lambda_value"),
           "query_expansion": ("k", "alpha", "dba")}
  if method not in names:
    raise UserError(f"--rerank must be one of {', '.join(names)}, got "
                    f"{method!r}.")
  params = {k: v for k, v in params.items() if k in names[method]}
  try:
    if method == "k_reciprocal":
      rerank_lib.check_k_reciprocal_args(params.get("k1", 20),
                                         params.get("k2", 6),
                                         params.get("lambda_value", 0.3))
    else:
      rerank_lib.check_query_expansion_args(params.get("k", 5),
                                            params.get("alpha", 3.0))
  except ValueError as e:
    raise UserError(f"Bad --rerank={method} parameter: {e} (flags "
                    "--rerank_k1, --rerank_k2, --rerank_lambda; --rerank_k, "
                    "--rerank_alpha).") from None
  return dict(method=method, params=params)


def evaluate(workdir: str, step: int | None = None, split: str | None = None,
             rerank: dict | None = None) -> dict:
  """Metrics of a checkpoint; `rerank` (see rerank_options) adds the
  re-ranked retrieval metrics as result["reranked"]."""
  step, config, meta, task, model, state, mesh = restore_lib.restore(
      workdir, step)
  split = split or config.eval_split
  if rerank is None:
    metrics, dataset = task.evaluate(config, meta, model, state, split, mesh)
  elif config.task != "retrieval":
    raise UserError(f"--rerank applies to retrieval tasks; this run's task "
                    f"is {config.task!r}.")
  else:
    metrics, dataset = task.evaluate(config, meta, model, state, split, mesh,
                                     rerank=rerank)
  reranked = metrics.pop("reranked", None)
  result = dict(
      step=step, workdir=os.path.abspath(workdir), metrics=metrics,
      num_params=models.count_params(state.params),
      param_bytes=models.param_bytes(state.params), dataset=dataset,
      config=config.to_dict())
  if reranked is not None:
    result["reranked"] = dict(rerank, metrics=reranked)
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "eval", f"step_{step}.json"), result,
                  indent=2)
  return result


@exit_on_user_error
def main(argv):
  cli.set_up(argv)
  if FLAGS.select and FLAGS.step is not None:
    raise UserError("Give --step or --select, not both.")
  given = [f"--{name}" for name in ("rerank_k1", "rerank_k2", "rerank_lambda",
                                      "rerank_k", "rerank_alpha", "rerank_dba")
           if FLAGS[name].present]
  if given and not FLAGS.rerank:
    raise UserError(f"{', '.join(given)} given without --rerank="
                    f"{'|'.join(rerank_lib.METHODS)}.")
  rerank = rerank_options(
      FLAGS.rerank, k1=FLAGS.rerank_k1, k2=FLAGS.rerank_k2,
      lambda_value=FLAGS.rerank_lambda, k=FLAGS.rerank_k,
      alpha=FLAGS.rerank_alpha, dba=FLAGS.rerank_dba)
  step = (restore_lib.best_step(FLAGS.workdir, FLAGS.select) if FLAGS.select
          else FLAGS.step)
  result = evaluate(FLAGS.workdir, step, FLAGS.split, rerank)
  if jax.process_index() == 0:
    print(format_table(result))


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)
