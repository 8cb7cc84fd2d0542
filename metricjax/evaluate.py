r"""Evaluation CLI: checkpoint -> metrics.

  python -m metricjax.evaluate --workdir=DIR [--step=N] [--split=test]

Restores the checkpoint with the config and dataset description saved in it,
embeds the evaluation split, and writes DIR/eval/step_N.json (metrics,
num_params, param_bytes, dataset and split sizes, step, config) plus a table
on stdout.
"""

import json
import os
import tempfile

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from tqdm import tqdm

from metricjax import checkpoint
from metricjax import data as data_lib
from metricjax import metrics as metrics_lib
from metricjax import models
from metricjax import parallel
from metricjax import state as state_lib
from metricjax.errors import UserError, exit_on_user_error, parse_flags_or_exit

FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("workdir", None, "A directory written by metricjax.train.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("split", None, "Split to evaluate (default: config.eval_split).")
  flags.mark_flags_as_required(["workdir"])


def embed(model, variables, images: np.ndarray, *, batch_size: int, mesh,
          desc: str = "embed") -> dict[str, np.ndarray]:
  """Model outputs for every image, in batches sharded over the mesh."""
  parallel.check_divisible(batch_size, mesh, "config.eval.batch_size")
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  n = len(images)
  chunks = []
  for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch",
                    dynamic_ncols=True, mininterval=1.0):
    batch = images[start:start + batch_size]
    # Pad the last batch so every call has one shape (one compilation).
    pad = batch_size - len(batch)
    if pad:
      batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
    out = jax.device_get(apply(variables, parallel.global_batch(batch, mesh)))
    chunks.append({k: v[:len(v) - pad] for k, v in out.items()})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _write_json_atomic(path: str, obj: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


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
  mngr = checkpoint.manager(workdir, create=False)
  step = checkpoint.resolve_step(mngr, step)
  meta = checkpoint.restore_meta(mngr, step)
  config = ml_collections.ConfigDict(meta["config"])
  train_meta = meta["dataset"]
  split = split or config.eval_split

  mesh = parallel.create_mesh()
  model = state_lib.model_from_config(config, train_meta["num_classes"])
  tx = state_lib.create_optimizer(config)
  abstract = jax.eval_shape(
      lambda rng: state_lib.init_state(model, tx, tuple(train_meta["image_shape"]), rng),
      jax.random.key(0))
  state = checkpoint.restore_state(
      mngr, step, checkpoint.abstract_like(abstract, parallel.replicated(mesh)))
  mngr.close()

  ds = data_lib.load_dataset(config.dataset, split)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  outputs = embed(model, variables, ds.images, batch_size=config.eval.batch_size,
                  mesh=mesh, desc=f"embed {ds.name}/{split}")
  metrics = metrics_lib.retrieval_metrics(
      outputs["embedding"], ds.labels, ks=tuple(config.eval.ks))
  if "logits" in outputs:
    metrics["accuracy"] = metrics_lib.accuracy(outputs["logits"], ds.labels)

  result = dict(
      step=step, workdir=os.path.abspath(workdir), metrics=metrics,
      num_params=models.count_params(state.params),
      param_bytes=models.param_bytes(state.params),
      dataset=dict(name=ds.name, source=ds.source, eval_split=split,
                   split_sizes={train_meta["split"]: train_meta["size"], split: len(ds)}),
      config=meta["config"])
  _write_json_atomic(os.path.join(workdir, "eval", f"step_{step}.json"), result)
  return result


@exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {' '.join(argv[1:])}.")
  result = evaluate(FLAGS.workdir, FLAGS.step, FLAGS.split)
  print(format_table(result))


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)
