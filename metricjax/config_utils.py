"""Configs: the base config (every field and its default, once), loading
config files, and parsing their `:key=value,...` argument (big_vision style).

A config file starts from `base_config()` and overrides what its experiment
needs; `metricjax.config_check.validate` checks a config against the base
before anything is read or compiled. The base lives here, not in configs/,
because ml_collections loads a config file by its path, so a sibling module
of it is not importable from every working directory.
"""

import difflib
import os
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict
from ml_collections.config_flags import config_flags

from metricjax.errors import UserError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """"a=1,b=x" -> ConfigDict, typed like `defaults`; unknown keys are errors."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise UserError(
          f"Bad config argument {item!r}: expected key=value with key one of "
          f"{', '.join(sorted(defaults))}.")
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise UserError(f"Config argument {key} wants true or false, got {value!r}.")
      result[key] = value.lower() in ("true", "1")
    else:
      try:
        result[key] = kind(value)
      except ValueError:
        raise UserError(
            f"Config argument {key} wants a {kind.__name__}, got {value!r}.") from None
  return result


def load_config(spec: str) -> ml_collections.ConfigDict:
  """"configs/X.py[:ARGS]" -> get_config(ARGS), loaded as the CLIs'
  --config flag loads it (ml_collections' config-file parser), but unlocked,
  so that a script may add fields before training."""
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    raise UserError(f"Config file {path} does not exist (from {spec!r}).")
  parser = config_flags.ConfigFileFlagParser(name="config", lock_config=False)
  return parser.parse(spec)



# metricjax/tasks' TASKS (tests/test_config.py keeps them equal).
TASKS = ("retrieval", "vse")

# Sections whose keys belong to the code they configure, not to the base:
# any keys, checked by that code (models.create_model for the model's
# fields, the loss for its hyper-parameters), which validate() calls.
OPEN_SECTIONS = ("model", "loss.kwargs")
# Pieces of a composed loss (losses.build): None (the loss's
# pytorch-metric-learning default), a name, or {"name": ..., **kwargs}.
LOSS_PIECES = ("distance", "miner", "reducer", "regularizer")


def base_config(task: str = "retrieval") -> ml_collections.ConfigDict:
  """Every field a config of `task` ("retrieval" or "vse") has, with its
  default. Configs start from it and override what their experiment needs;
  a field not here is an error (metricjax.config_check.validate)."""
  if task not in TASKS:
    raise UserError(f"base_config(task={task!r}): known tasks are "
                    f"{', '.join(TASKS)}.")
  c = ml_collections.ConfigDict()
  c.task = task  # What is trained and evaluated: metricjax/tasks/<task>.py.
  # Required: a dataset name (mnist, fashion_mnist, cifar10, cub, cars196,
  # sop, inshop, flickr8k, ...) or a spec (idx:DIR, folder:PATH, csv:FILE,
  # tfds:NAME, karpathy:FILE.json); docs/data.md.
  c.dataset = config_dict.placeholder(str)
  c.train_split = "train"  # What training reads (and holds validation out of).
  c.eval_split = "test"  # What metricjax.evaluate reads by default.
  c.seed = 0  # Every step's randomness derives from (seed, step).

  # Open: models.MODELS[name] and that module's fields (models.create_model
  # checks them).
  c.model = dict(name="compact")

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "ms"  # A metricjax.losses name (PML's, snake case).
  c.loss.kwargs = {}  # Open: the loss's hyper-parameters ({}: its defaults).
  for piece in LOSS_PIECES:  # losses.build's pieces; None: PML's default.
    setattr(c.loss, piece, config_dict.placeholder(object))
  # Cross-batch memory around the loss (PML's CrossBatchMemory): this many
  # past embeddings are its references; 0: none.
  c.loss.memory_size = 0
  # Weighted extra losses on the same batch (PML's MultipleLosses): a list of
  # {"name", "weight", "kwargs", "distance", "miner", "reducer",
  # "regularizer"}, each as config.loss's fields.
  c.loss.extra = []
  # The loss's learnable parameters (proxies, class weights) learn at this
  # x the learning rate.
  c.loss.param_lr_multiplier = 1.0

  c.batch_size = 128  # Global: images (triplets for sampler=triplets) a step.
  c.total_steps = 1000  # Training steps (a run resumed goes on to them).
  # Optimiser: "adamw" or "rmsprop" (with momentum, PyTorch's semantics).
  c.optimizer = "adamw"
  c.learning_rate = 1e-3  # Peak, after warmup_steps of linear warm-up.
  c.warmup_steps = 100  # Linear warm-up from 0 to learning_rate.
  # "cosine" (to 1% of the peak at total_steps) or "constant".
  c.lr_schedule = "cosine"
  c.weight_decay = 1e-4  # AdamW's decoupled; RMSprop's coupled L2.
  c.momentum = 0.0  # RMSprop's.
  # A pretrained trunk (models.EmbeddingNet's "trunk") learns at this x the
  # learning rate.
  c.backbone_lr_multiplier = 1.0
  c.grad_clip_norm = 0.0  # Global-norm clipping; 0 = off.
  # True: a step with a NaN/inf loss or gradient is skipped (counted as
  # nonfinite_steps in metrics.jsonl) instead of stopping the run.
  c.skip_nonfinite_steps = False
  # Training steps per jitted call (an unrolled lax.scan): fewer dispatches,
  # the same results up to float32 rounding; logs, validation and
  # checkpoints still fall on their steps.
  c.steps_per_call = 1
  # Activations in "float32" or "bfloat16"; parameters, optimiser state,
  # normalisation statistics and loss reductions stay float32.
  c.compute_dtype = "float32"
  # XLA:CPU kernels (metricjax/xla_routing.py): "conv_eigen" takes the
  # convolutions off YNNPACK, whose weight gradient is slow; or
  # "jaxlib_default". Ignored off CPU.
  c.xla_cpu_routing = "conv_eigen"

  c.log_every = 50  # Steps between rows of metrics.jsonl.
  c.checkpoint_every = 500  # Steps between checkpoints (and at the end).
  c.keep_checkpoints = 3  # The newest kept; older ones are deleted.
  # Validation every eval_every steps (0: off). retrieval: on val_size
  # examples held out of train_split (stratified by class), or, on the
  # photo benchmarks, on data.val_classes classes held out; vse: on the
  # first val_size images of val_split (0: all).
  c.eval_every = 0  # Steps between validations; 0: none.
  c.val_size = 0  # Examples (retrieval) or images (vse) validated on.

  c.eval = ml_collections.ConfigDict()  # Validation and metricjax.evaluate.
  c.eval.batch_size = 1000  # Images embedded per call (validation, evaluate).
  if task == "retrieval":
    _add_retrieval_fields(c)
  else:
    _add_vse_fields(c)
  return c


def _add_retrieval_fields(c: ml_collections.ConfigDict) -> None:
  """The fields of tasks/retrieval.py (embedding nets on labelled images)."""
  # A linear classifier on the embedding: the logits that logits losses
  # (ce) train on; retrieval still ranks embeddings.
  c.classification_head = False
  # "balanced" (P classes x samples_per_class images), "uniform", or
  # "triplets" (explicit random triplets, for the *_explicit losses).
  c.sampler = "balanced"
  c.samples_per_class = 4
  # Random crop (pad 4) + horizontal flip on the device, for the packed
  # fixed-size datasets (the photo benchmarks are augmented on the host).
  c.augment = False
  # Photo benchmarks: the side of the square views decoded on the host.
  c.image_size = 224
  # An imbalanced training set: keep_fraction of the examples of `classes`
  # kept, drawn with `seed` (packed datasets only).
  c.imbalance = ml_collections.ConfigDict()
  c.imbalance.classes = ()  # Class ids; () = off.
  c.imbalance.keep_fraction = 1.0  # Of each listed class's examples.
  c.imbalance.seed = 0  # Which examples are kept.

  c.data = ml_collections.ConfigDict()
  # Training data on the devices (sampled there), streamed from the host,
  # or auto: on the devices when the split fits device_budget_mb (the split
  # is replicated, so it costs its size on every device).
  c.data.placement = "auto"
  c.data.device_budget_mb = 1024.0  # auto's limit for the device.
  # Validation on the photo benchmarks (eval_every > 0): this fraction (or
  # count) of the training classes held out, every image of them.
  c.data.val_classes = 0.0
  # The photo benchmarks' host pipeline (data/photo_pipeline.py):
  c.data.boxes = False  # Crop CUB / Cars196 to their bounding boxes first.
  # Training views: RandomResizedCrop's area scale and aspect ratio, flip.
  c.data.crop_scale = (0.16, 1.0)  # Fraction of the image's area.
  c.data.crop_ratio = (3 / 4, 4 / 3)  # Width / height.
  c.data.flip = True  # Random horizontal flip.
  # Evaluation views: shorter side to eval_resize (0: image_size * 256 /
  # 224), then the centre image_size crop.
  c.data.eval_resize = 0
  c.data.draft = True  # Reduced-DCT JPEG decoding when the view loses nothing.
  c.data.skip_corrupt = False  # True: skip (and count) undecodable images.
  c.data.num_threads = 8  # Decode threads.
  c.data.prefetch = 256  # Decoded images queued ahead.
  c.data.workers = 0  # > 0: decode in that many processes instead.

  c.eval.ks = (1, 5, 10)  # Recall@k reported.
  # k-means NMI / AMI of the evaluated split too; None: the dataset's
  # convention (data.convention: on for the photo benchmarks).
  c.eval.clustering = config_dict.placeholder(bool)
  c.eval.kmeans_max_iter = 100  # k-means iterations of the clustering metrics.


def _add_vse_fields(c: ml_collections.ConfigDict) -> None:
  """The fields of tasks/vse.py (image-caption embedding on frozen image
  features)."""
  c.val_split = "val"  # The split validation reads (val_size images of it).
  c.image_features = "fne"  # "fne" (full-network embedding) or "fc7".
  # The frozen CNN whose features the model reads.
  c.backbone = ml_collections.ConfigDict()
  c.backbone.name = "vgg16"  # models.TAPPED: vgg16 (ImageNet) or vgg.
  c.backbone.weights = ""  # Its .npz (tools/convert_vgg16.py); required.
  # None: what the weights file records ("torch" or "caffe" preprocessing;
  # the image size of a VGG trained here), else torch and 224.
  c.backbone.preprocess = config_dict.placeholder(str)
  c.backbone.image_size = config_dict.placeholder(int)
  c.backbone.batch_size = 64  # Images a backbone call.
  c.features_cache_dir = ""  # "": $METRICJAX_CACHE_DIR/features.
  c.vocab_min_count = 4  # A word's count in the training captions to be kept.
  c.max_caption_length = 50  # Words; longer captions are truncated.
  c.model = dict(name="vse")  # Open: models.VSEModel's fields.
  c.loss.name = "vse"  # The ranking loss (kwargs: margin, max_violation).


def with_defaults(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A config saved with a checkpoint (a dict, from JSON) over the base
  config of its task: a field added since it was saved gets its default
  (the library's fallback for it before the base existed). Fields the base
  no longer has are kept (validate reports them)."""
  # Checkpoints from before config.task (all of the retrieval task) have
  # no task field: the one place a saved config is read with a default.
  config = base_config(saved.get("task", "retrieval"))
  _merge(config, saved, "")
  return config


def _merge(base: ml_collections.ConfigDict, saved: Mapping[str, Any],
           path: str) -> None:
  for key, value in saved.items():
    where = f"{path}{key}"
    if (key in base and isinstance(base[key], ml_collections.ConfigDict)
        and where not in OPEN_SECTIONS and isinstance(value, Mapping)):
      _merge(base[key], value, where + ".")
      continue
    with base.ignore_type():  # JSON's lists are the base's tuples.
      base[key] = value


def field_errors(config: Any) -> list[str]:
  """One message per field of `config` that its task's base config does not
  have, per base field it lacks, and per value of the wrong type. Open
  sections (OPEN_SECTIONS) are only checked to be mappings."""
  task = _get(config, "task")
  if task not in TASKS:
    return [f"config.task={task!r} is not a task; use one of "
            f"{', '.join(TASKS)} (metricjax/tasks/)."]
  errors = []
  _compare(config, base_config(task), "config", task, errors)
  return errors


def _get(config, key):
  try:
    return config[key]
  except (KeyError, AttributeError, TypeError):
    return None


def _compare(config, base, path: str, task: str, errors: list[str]) -> None:
  if not isinstance(config, (Mapping, ml_collections.ConfigDict)):
    errors.append(f"{path} is {config!r}, not a section: set its fields one "
                  f"by one (e.g. {path}.{next(iter(base.keys()), 'name')} = "
                  "...).")
    return
  keys = list(config.keys())
  for key in keys:
    if key not in base:
      close = difflib.get_close_matches(key, list(base.keys()), n=1)
      hint = f" (did you mean {path}.{close[0]}?)" if close else ""
      other = [t for t in TASKS
               if t != task and _has(base_config(t), path, key)]
      if other:
        hint += (f"; it is a field of task {other[0]!r}, not of {task!r}")
      errors.append(f"{path}.{key} is not a config field{hint}. The fields "
                    "and their defaults: metricjax/config_utils.py "
                    "base_config().")
  missing = [key for key in base.keys() if key not in keys]
  if missing:
    section = (f"assigning a whole section ({path} = dict(...)) drops the "
               "fields it does not name" if path != "config" else
               "a config built from scratch lacks them")
    errors.append(
        f"{path} lacks the field{'s' if len(missing) > 1 else ''} "
        f"{', '.join(missing)}. A config starts from "
        f"metricjax.config_utils.base_config({task!r}) and sets its fields "
        f"one by one: {section}.")
  for key in base.keys():
    where = f"{path}.{key}"
    if key not in keys:
      continue
    value, default = config[key], base[key]
    short = where.removeprefix("config.")
    if short in OPEN_SECTIONS:
      if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
        errors.append(f"{where}={value!r} must be a mapping of fields, "
                      "e.g. dict(name=...).")
    elif path == "config.loss" and key in LOSS_PIECES:
      if not (value is None or isinstance(value, str) or isinstance(
          value, (Mapping, ml_collections.ConfigDict))):
        errors.append(f"{where}={value!r} must be None (the loss's default), "
                      "a name, or a dict(name=..., **kwargs).")
    elif isinstance(default, ml_collections.ConfigDict):
      _compare(value, default, where, task, errors)
    else:
      kind = base.get_ref(key).get_type()
      if not _is(value, kind, placeholder=default is None):
        errors.append(f"{where}={value!r} has type {type(value).__name__}; "
                      f"it wants {_describe(kind)} (default {default!r}).")


def _has(base, path: str, key: str) -> bool:
  node = base
  for part in path.split(".")[1:]:
    node = _get(node, part)
    if not isinstance(node, ml_collections.ConfigDict):
      return False
  return key in node


def _is(value, kind, *, placeholder: bool) -> bool:
  if value is None:
    return placeholder
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind is tuple:
    return isinstance(value, (tuple, list))
  if kind is object:
    return True
  return isinstance(value, kind)


def _describe(kind) -> str:
  return {bool: "a bool (True or False)", int: "an int", float: "a number",
          str: "a str", tuple: "a tuple"}.get(kind, f"a {kind.__name__}")
