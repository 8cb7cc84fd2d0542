"""validate(config): every error of a config at once, before any data is
read or program compiled.

A config is checked against its task's base config
(metricjax.config_utils.base_config: unknown fields, missing fields, wrong
types), then for settings that cannot work together (a sampler and a loss
that take different batches, a logits loss without a classification head,
...). The open sections (config_utils.OPEN_SECTIONS: config.model and
config.loss.kwargs) are checked by the code they configure, called from
here: models.create_model for the model's fields, the loss for its
hyper-parameters. What needs the data (its number of classes, whether it is
a photo benchmark) is checked where the data is read.

`metricjax.train`, `metricjax.aot` and `metricjax.restore` (so `evaluate`,
`search` and `export`) call it first; call it yourself on a config built in
code.
"""

import math
from typing import Callable

from metricjax import config_utils
from metricjax import data as data_lib
from metricjax import losses
from metricjax import models
from metricjax import state as state_lib
from metricjax import xla_routing
from metricjax.errors import UserError
from metricjax.tasks import vse

SAMPLERS = ("balanced", "uniform", "triplets")
PLACEMENTS = ("device", "stream", "auto")
RETRIEVAL_INPUTS = ("embedding", "logits", "triplets", "views")


def validate(config) -> None:
  """Raises one UserError listing every error of `config` (each naming its
  field), or returns None."""
  errors = check(config)
  if len(errors) == 1:
    raise UserError(errors[0])
  if errors:
    raise UserError(f"{len(errors)} config errors:\n" +
                    "\n".join(f"  - {e}" for e in errors))


def check(config) -> list[str]:
  """validate's messages, one per error found."""
  errors = config_utils.field_errors(config)
  malformed = bool(errors)
  if "task" not in config or config.task not in config_utils.TASKS:
    return errors  # field_errors says so.
  checks = _COMMON + _TASK_CHECKS[config.task]
  for one in checks:
    try:
      errors += one(config)
    except UserError as e:
      errors.append(str(e))
    except (AttributeError, KeyError, TypeError, ValueError):
      # A malformed field (reported above) that this check reads.
      if not malformed:
        raise
  return list(dict.fromkeys(errors))  # Two checks may find one error.


def _raised(fn: Callable, *args, **kwargs) -> list[str]:
  """[message] of the UserError fn raises, or []."""
  try:
    fn(*args, **kwargs)
  except UserError as e:
    return [str(e)]
  return []


def _dataset(config) -> list[str]:
  if not config.dataset:
    return ["config.dataset is not set: give a dataset name or spec, e.g. "
            "--config.dataset=fashion_mnist (docs/data.md lists them)."]
  return []


_AT_LEAST = {"total_steps": 1, "batch_size": 1, "steps_per_call": 1,
             "log_every": 1, "checkpoint_every": 1, "keep_checkpoints": 1,
             "eval.batch_size": 1, "eval_every": 0, "val_size": 0,
             "warmup_steps": 0}


def _counts(config) -> list[str]:
  errors = []
  for field, low in _AT_LEAST.items():
    value = config
    for part in field.split("."):
      value = value[part]
    if value < low:
      errors.append(f"config.{field}={value} must be >= {low}.")
  return errors


def _choices(config) -> list[str]:
  errors = []
  for field, known in (("optimizer", state_lib.OPTIMIZERS),
                       ("lr_schedule", state_lib.SCHEDULES),
                       ("compute_dtype", models.COMPUTE_DTYPES)):
    if config[field] not in known:
      errors.append(f"config.{field}={config[field]!r}; use one of "
                    f"{', '.join(known)}.")
  return errors + _raised(xla_routing.check, config.xla_cpu_routing)


def _loss_name(config) -> list[str]:
  return _raised(losses.get_loss, config.loss.name)


_COMMON = (_dataset, _counts, _choices, _loss_name)


# --- The retrieval task ------------------------------------------------------


def _retrieval_model(config) -> list[str]:
  # The dataset's classes are not known here: the head is checked with them.
  return _raised(models.create_model, config.model)


def _sampler(config) -> list[str]:
  if config.sampler not in SAMPLERS:
    return [f"config.sampler={config.sampler!r}: use 'balanced' (P classes "
            "x K images), 'uniform', or 'triplets' (explicit triplets)."]
  if config.sampler == "balanced":
    # Any number of classes: the dataset's is checked when it is read.
    return _raised(data_lib.check_batch_shape, config.batch_size,
                   config.samples_per_class, math.inf)
  return []


def _retrieval_loss(config) -> list[str]:
  """The loss against the sampler and the model, its pieces and keywords."""
  name = config.loss.name
  if _raised(losses.get_loss, name):
    return []  # Reported by _loss_name.
  loss = losses.get_loss(name)
  if loss.input not in RETRIEVAL_INPUTS:
    return [f"Loss {name!r} (config.loss.name) takes {loss.input!r}, not a "
            f"labelled image batch; it belongs to another task than "
            f"{config.task!r}."]
  errors = []
  if loss.input == "views" and not config.augment:
    errors.append(
        f"Loss {name!r} compares two augmented views of each image; with "
        "config.augment=False both views are the same image and the loss "
        "is degenerate: set config.augment=True (pad-crop-flip, each view "
        "drawn apart).")
  if loss.input == "logits" and not config.classification_head:
    errors.append(f"Loss {name!r} needs logits: set "
                  "config.classification_head=True.")
  if loss.init is not None and config.sampler == "triplets":
    errors.append(
        f"Loss {name!r} learns per-class parameters and takes a labelled "
        "batch, not explicit triplets (config.sampler='triplets'); use "
        "sampler 'balanced' or 'uniform'.")
  elif (loss.input == "triplets") != (config.sampler == "triplets"):
    errors.append(
        f"config.sampler={config.sampler!r} does not fit loss {name!r}: "
        "explicit-triplet losses (*_explicit) need sampler 'triplets', the "
        "others 'balanced' or 'uniform'.")
  # The pieces, keywords, memory and extra losses (losses.build checks the
  # combinations).
  errors += _raised(losses.configured.from_config, config.loss)
  memory = config.loss.memory_size
  if memory < 0 or 0 < memory < config.batch_size:
    errors.append(
        f"config.loss.memory_size={memory}: the cross-batch memory holds "
        f"whole global batches (config.batch_size={config.batch_size}); set "
        "it to 0 (none) or at least the batch size (XBM's papers: a few "
        "thousand).")
  return errors


def _placement(config) -> list[str]:
  if config.data.placement not in PLACEMENTS:
    return [f"config.data.placement={config.data.placement!r}: use "
            f"{', '.join(PLACEMENTS[:-1])} or {PLACEMENTS[-1]}."]
  return []


def _validation(config) -> list[str]:
  """What validation holds out: examples (val_size) or classes
  (data.val_classes, the photo benchmarks), one of them when it is on."""
  if not config.eval_every:
    return []
  if config.val_size and config.data.val_classes:
    return [f"config.val_size={config.val_size} and config.data.val_classes="
            f"{config.data.val_classes} both hold out validation data: "
            "val_size examples of the packed datasets, val_classes classes "
            "of the photo benchmarks; set config.val_size=0 (a photo "
            "benchmark) or config.data.val_classes=0 (a packed dataset)."]
  if not config.val_size and not config.data.val_classes:
    return [f"config.eval_every={config.eval_every} validates on held-out "
            "training data, but none is held out: set config.data.val_classes "
            "(a fraction or a count of the training classes, the photo "
            "benchmarks; e.g. 0.25 as the Reality Check's 4 folds), or "
            "config.val_size (examples, the packed datasets), or "
            "config.eval_every=0."]
  return []


# --- The vse task ------------------------------------------------------------


def _vse_model(config) -> list[str]:
  # The vocabulary's size comes from the training captions.
  return _raised(models.create_model,
                 dict(config.model.to_dict(), vocab_size=2))


def _vse_features(config) -> list[str]:
  errors = []
  if config.image_features not in vse.FEATURES:
    errors.append(f"config.image_features={config.image_features!r}; use "
                  f"one of {', '.join(vse.FEATURES)}.")
  if config.backbone.name not in models.TAPPED:
    errors.append(f"Unknown backbone {config.backbone.name!r} "
                  f"(config.backbone.name); known: "
                  f"{', '.join(models.TAPPED)}.")
  return errors


def _vse_loss(config) -> list[str]:
  name = config.loss.name
  if _raised(losses.get_loss, name):
    return []  # Reported by _loss_name.
  errors = []
  if losses.get_loss(name).input != "image_text":
    errors.append(
        f"config.loss.name={name!r} does not take (image, caption) "
        "embedding pairs; use 'vse' (config.loss.kwargs.max_violation: "
        "False sums over all negatives as VSE, True takes the hardest as "
        "VSE++).")
  pieces = [k for k in losses.configured.PIECES if config.loss[k]]
  pieces += ["memory_size"] if config.loss.memory_size else []
  pieces += ["extra"] if config.loss.extra else []
  if pieces:
    errors.append(f"config.loss.{', config.loss.'.join(pieces)}: the vse "
                  "task's ranking loss composes no distance, miner, reducer, "
                  "regularizer, memory or extra loss; leave them unset.")
  return errors


_TASK_CHECKS = {
    "retrieval": (_retrieval_model, _sampler, _retrieval_loss, _placement,
                  _validation),
    "vse": (_vse_model, _vse_features, _vse_loss),
}
