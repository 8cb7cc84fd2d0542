"""The base config and validate(config): every config error at once, found
before any data is read or program compiled; every configs/*.py loads and
validates."""

import json
import pathlib

import pytest

from metricjax import config_check
from metricjax import config_utils
from metricjax import parallel
from metricjax import tasks
from metricjax.config_utils import base_config
from metricjax.errors import UserError
from helpers import load_config
from helpers import REPO

# Each config with the arguments its docstring and docs/configs.md document.
DOCUMENTED = [
    ("cifar_vgg", None),
    ("compact_involution", None),
    ("compact_involution", "dataset=cifar10,loss=ce"),
    ("compact_involution", "loss=proxy_anchor,variant=conv_only,activation=relu"),
    ("siamese", "loss=shadow"),
    ("siamese", "loss=triplet,mining=semihard,keep=0.5,distance=cosine"),
    ("siamese", "loss=shadow,mining=random,normalize=false,margin=0.1"),
    ("fne_vse", None),
    ("fne_vse", "dataset=flickr8k,image_features=fc7,loss=max,weights=vgg16.npz"),
    ("fne_vse", "dataset=coco,backbone=vgg,embed_dim=1024"),
    ("dml_benchmark", "dataset=cub,backbone=compact,image_size=64"),
    ("dml_benchmark", "dataset=cars196,loss=ce,backbone=resnet18"),
    ("dml_benchmark", "dataset=sop,backbone=resnet50,weights=resnet50.npz,"
                      "protocol=reality_check"),
    ("dml_benchmark", "dataset=inshop,backbone=vit_s16,protocol=proxy_anchor,"
                      "loss=proxy_anchor"),
    ("dml_benchmark", "dataset=cub,backbone=efficientnet_lite0,"
                      "embedding_dim=128"),
]


@pytest.mark.parametrize("name, arg", DOCUMENTED)
def test_every_config_loads_and_validates(name, arg):
  config = load_config(name, arg)
  assert config_check.check(config) == []
  config_check.validate(config)


def test_every_config_file_is_checked():
  files = {p.stem for p in (pathlib.Path(REPO) / "configs").glob("*.py")}
  assert files == {name for name, _ in DOCUMENTED}


def test_the_base_knows_every_task():
  assert set(config_utils.TASKS) == set(tasks.TASKS)
  for task in config_utils.TASKS:
    config = base_config(task)
    config.dataset = "mnist" if task == "retrieval" else "flickr8k"
    assert config_check.check(config) == [], task


def _valid(**fields):
  config = base_config()
  config.dataset = "mnist"
  for field, value in fields.items():
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = value
  return config


def _error(config) -> str:
  with pytest.raises(UserError) as e:
    config_check.validate(config)
  return str(e.value)


# Each check that training once reached by building the task (reading the
# data) or by tracing the step, now a config error before either.
@pytest.mark.parametrize("field, value, match", [
    ("samples_per_class", 5, "batch_size=128 is not a multiple of "
                             "samples_per_class=5"),
    ("samples_per_class", 1, "samples_per_class=1 must be an integer >= 2"),
    ("batch_size", 4, "a single class per batch"),
    ("loss.name", "nope", "Unknown loss 'nope'"),
    ("sampler", "nope", "config.sampler='nope'"),
    ("data.placement", "host", "config.data.placement='host'"),
    ("optimizer", "sgdx", "config.optimizer='sgdx'"),
    ("lr_schedule", "step", "config.lr_schedule='step'"),
    ("compute_dtype", "float16", "config.compute_dtype='float16'"),
    ("xla_cpu_routing", "fastest", "config.xla_cpu_routing='fastest'"),
    ("total_steps", 0, "config.total_steps=0 must be >= 1"),
    ("steps_per_call", 0, "config.steps_per_call=0 must be >= 1"),
    ("log_every", 0, "config.log_every=0 must be >= 1"),
    ("task", "nope", "config.task='nope' is not a task"),
    ("dataset", None, "config.dataset is not set"),
    ("model.name", "nope", "Unknown model 'nope'"),
    ("model.activation", "swish", "Unknown activation 'swish'"),
    ("loss.kwargs", {"alpah": 2.0}, "no hyper-parameter alpah"),
])
def test_bad_config_is_one_user_error(field, value, match):
  assert match in _error(_valid(**{field: value}))


@pytest.mark.parametrize("fields, match", [
    # A loss that learns per-class parameters takes labelled batches.
    (dict(**{"loss.name": "proxy_nca"}, sampler="triplets"),
     "learns per-class parameters"),
    # An explicit-triplet loss takes explicit triplets, and only those.
    (dict(**{"loss.name": "shadow_explicit"}), "does not fit loss"),
    (dict(sampler="triplets"), "does not fit loss 'ms'"),
    (dict(**{"loss.name": "ce"}), "set config.classification_head=True"),
    (dict(**{"loss.name": "vse"}), "belongs to another task"),
    # Two views of each image: augmented apart, one loss on the batch only.
    (dict(**{"loss.name": "vicreg"}, augment=False), "set config.augment=True"),
    (dict(**{"loss.name": "self_supervised", "loss.memory_size": 1024},
          augment=True), "cannot be summed with extra losses or given a "
     "cross-batch memory"),
    (dict(**{"loss.name": "vicreg", "loss.extra": [{"name": "ms"}]},
          augment=True), "cannot be summed"),
    (dict(**{"loss.name": "vicreg"}, augment=True, sampler="triplets"),
     "does not fit loss"),
    (dict(**{"loss.memory_size": 64}), "at least the batch size"),
    (dict(**{"loss.memory_size": 1024, "loss.name": "proxy_anchor"}),
     "cannot take a cross-batch memory"),
    (dict(**{"loss.memory_size": 1024, "loss.name": "contrastive",
             "loss.miner": "angular"}), "no cross-batch memory"),
    (dict(**{"loss.extra": [{"name": "arcface", "wieght": 1}]}),
     "has no field wieght"),
    (dict(**{"loss.extra": [{"name": "vse"}]}), "cannot be summed"),
    (dict(**{"loss.miner": "batch_hard", "loss.name": "supcon"}), "miner"),
    (dict(eval_every=10), "set config.data.val_classes"),
    (dict(eval_every=10, val_size=16, **{"data.val_classes": 0.25}),
     "set config.val_size=0"),
])
def test_impossible_combinations(fields, match):
  assert match in _error(_valid(**fields))


def test_unknown_fields_are_named_with_a_suggestion():
  config = _valid()
  config.eval.clusterng = True
  config.learning_rat = 0.1
  config.image_features = "fne"  # The vse task's.
  message = _error(config)
  assert message.startswith("3 config errors:\n")
  assert "config.eval.clusterng is not a config field (did you mean " \
         "config.eval.clustering?)" in message
  assert "config.learning_rat is not a config field (did you mean " \
         "config.learning_rate?)" in message
  assert "config.image_features is not a config field; it is a field of " \
         "task 'vse', not of 'retrieval'" in message


def test_wrong_types_are_named():
  message = _error(_valid(batch_size="128", augment=1,
                          **{"eval.ks": 5, "data.device_budget_mb": "big",
                             "model": "compact"}))
  for words in ("config.batch_size='128' has type str; it wants an int",
                "config.augment=1 has type int; it wants a bool",
                "config.eval.ks=5 has type int; it wants a tuple",
                "config.data.device_budget_mb='big' has type str; it wants a "
                "number", "config.model='compact' must be a mapping"):
    assert words in message
  # Numbers widen, JSON's lists are tuples, a placeholder takes None.
  assert config_check.check(_valid(**{
      "learning_rate": 1, "eval.ks": [1, 2], "loss.miner": None})) == []


def test_a_replaced_section_lacks_fields():
  config = _valid()
  config.eval = dict(batch_size=100)
  assert ("config.eval lacks the fields clustering, kmeans_max_iter, ks. A "
          "config starts from metricjax.config_utils.base_config('retrieval')"
          in _error(config))


def test_every_error_is_reported_at_once():
  config = _valid(sampler="nope", optimizer="sgdx", samples_per_class=5,
                  **{"loss.name": "nope", "eval.clusterng": 1})
  message = _error(config)
  errors = message.splitlines()[1:]
  assert message.startswith(f"{len(errors)} config errors:") and len(errors) == 4
  for words in ("clusterng", "config.sampler='nope'", "config.optimizer='sgdx'",
                "Unknown loss 'nope'"):
    assert sum(words in e for e in errors) == 1, words


def test_vse_checks():
  config = load_config("fne_vse")
  config.image_features = "fc8"
  config.loss.name = "ms"
  config.loss.miner = "batch_hard"
  config.backbone.name = "vgg19"
  message = _error(config)
  assert "config.image_features='fc8'; use one of fne, fc7" in message
  assert "Unknown backbone 'vgg19' (config.backbone.name)" in message
  assert "config.loss.name='ms' does not take (image, caption)" in message
  assert "config.loss.miner: the vse task's ranking loss composes" in message
  config = load_config("fne_vse")
  config.sampler = "uniform"
  assert "it is a field of task 'retrieval'" in _error(config)


def test_a_saved_config_gets_the_fields_added_since():
  saved = json.loads(load_config("siamese").to_json_best_effort())
  del saved["eval"]["clustering"], saved["lr_schedule"], saved["imbalance"]
  del saved["task"]  # Checkpoints from before tasks were retrieval runs.
  config = config_utils.with_defaults(saved)
  assert config.task == "retrieval" and config.lr_schedule == "cosine"
  assert config.eval.clustering is None and config.imbalance.classes == ()
  assert config.eval.ks == (1, 5, 10)  # JSON's list, the base's tuple.
  config_check.validate(config)
  saved["dropped_since"] = 1
  assert "config.dropped_since is not a config field" in _error(
      config_utils.with_defaults(saved))


def test_batch_size_must_split_over_the_devices():
  # Where the devices are known (the mesh), not a config error: metricjax.aot
  # compiles a config for other device counts.
  with pytest.raises(UserError, match="batch_size=12 does not split evenly "
                                      "over the 8 devices"):
    parallel.check_divisible(12, parallel.create_mesh(), "config.batch_size")



def test_train_validates_before_reading_data(tmp_path):
  from metricjax import train as train_lib  # pylint: disable=g-import-not-at-top
  config = _valid(sampler="nope", dataset=f"idx:{tmp_path}/absent")
  with pytest.raises(UserError, match="config.sampler='nope'"):
    train_lib.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
