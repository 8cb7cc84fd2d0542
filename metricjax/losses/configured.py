"""config.loss as the one loss of a training step: the named loss with its
pieces (compose.build), a cross-batch memory around it (memory_size:
pytorch-metric-learning's CrossBatchMemory) and weighted extra losses on the
same batch (extra: PML's MultipleLosses with weights).

  loss = configured.from_config(config.loss)
  params = loss.init_params(rng, num_classes=..., embedding_dim=...)
  memory = loss.init_state(embedding_dim)
  value, memory = loss.apply(outputs, labels, params, memory, key)

Learnable parameters: the main loss's at the top level of loss_params (the
layout of runs without extras), extra i's under `loss_params["extra"]["i"]`.
The memory is the train state's loss_state; it holds the global batch's
embeddings, so it is the same on every device and host (metricjax/losses/
xbm.py). Extra losses see the batch only, not the memory.
"""

import inspect
from typing import Any, Mapping, NamedTuple

import jax

from metricjax.errors import UserError
from metricjax.losses import compose
from metricjax.losses import xbm
from metricjax.losses.compose import ALIASES
from metricjax.losses.compose import build
from metricjax.losses.compose import COMPOSABLE
from metricjax.losses.registry import check_loss_hyperparameters
from metricjax.losses.registry import Loss
from metricjax.losses.registry import REGISTRY
from metricjax.losses.self_supervised import self_supervised

PIECES = ("distance", "miner", "reducer", "regularizer")
# An extra loss's fields: config.loss's, with its weight.
EXTRA_FIELDS = ("name", "weight", "kwargs") + PIECES
_REFERENCE_ARGS = ("ref_embeddings", "ref_labels", "ref_mask", "self_index")


def _plain(value):
  return value.to_dict() if hasattr(value, "to_dict") else value


class Term(NamedTuple):
  """One loss of the sum."""
  name: str
  loss: Loss
  call_kwargs: dict[str, Any]  # hyper-parameters passed at each call
  init_kwargs: dict[str, Any]  # hyper-parameters of its init
  weight: float
  takes_key: bool  # a random piece (miner)

  def __call__(self, x, labels, params, **extra):
    if self.takes_key:
      extra = dict(extra)
    else:
      extra = {k: v for k, v in extra.items() if k != "key"}
    return self.loss.fn(x, labels, **self.call_kwargs, **extra, **params)


def get_loss(name: str) -> Loss:
  """The loss a config names: REGISTRY's, or one only `build` makes (PML's
  names, e.g. triplet_margin), with its defaults."""
  if name in REGISTRY:
    return REGISTRY[name]
  if name in COMPOSABLE:
    return Loss(build(name), "embedding")
  raise UserError(
      f"Unknown loss {name!r} (config.loss.name). Known losses: "
      f"{', '.join(sorted(set(REGISTRY) | set(COMPOSABLE)))}. To add one, "
      "write it in metricjax/losses/ and register it in "
      "metricjax/losses/registry.py.")


def term(spec: Mapping[str, Any], *, memory: bool = False,
         where: str = "config.loss") -> Term:
  """A loss of config.loss's shape (name, kwargs, pieces[, weight])."""
  name = spec["name"]
  kwargs = dict(_plain(spec.get("kwargs")) or {})
  pieces = {k: _plain(spec[k]) for k in PIECES if spec.get(k)}
  loss = get_loss(name)
  reducer = pieces.get("reducer")
  if reducer == "do_nothing" or (isinstance(reducer, dict)
                                 and reducer.get("name") == "do_nothing"):
    raise UserError(f"{where}.reducer='do_nothing' returns unreduced losses "
                    "(a library call, losses.build); a training step needs "
                    "one number: use mean, sum, avg_non_zero, threshold, "
                    "class_weighted, per_anchor or multiple.")
  init_kwargs = dict(kwargs)
  composable = name in COMPOSABLE or name in ALIASES
  if pieces or name not in REGISTRY or (memory and composable):
    # build checks the pieces and the keywords; the memory needs its
    # reference-set support (the composed losses have it).
    loss = loss._replace(fn=build(name, **pieces, **kwargs))
    call_kwargs = {}
  else:
    check_loss_hyperparameters(name, loss, kwargs)
    call_kwargs = {k: v for k, v in kwargs.items() if k != "num_classes"}
    if name == "self_supervised":  # Its wrapped loss: refused now, not in jit.
      self_supervised(
          call_kwargs.get("loss", "ntxent"),
          symmetric=call_kwargs.get("symmetric", True))
  params = inspect.signature(loss.fn).parameters
  miner = compose.make_miner(pieces["miner"]).name if "miner" in pieces else None
  composed_ok = compose.takes_references(name, miner)
  if memory and composable and not composed_ok:
    raise UserError(
        f"Loss {name!r} with miner {miner!r}: no cross-batch memory ({where}."
        "memory_size) yet; it compares the batch with itself only. Losses "
        "that take one: "
        f"{', '.join(n for n in sorted(COMPOSABLE) if compose.takes_references(n))}"
        f" (any miner but {', '.join(compose.MINERS_WITHOUT_REFERENCES)}).")
  if memory and kwargs.get("swap"):
    raise UserError(
        f"{where}.kwargs.swap with a cross-batch memory: PML's "
        "TripletMarginLoss(swap=True) inside CrossBatchMemory reads "
        "d(p, n) from batch rows, with memory indices, and fails once the "
        "memory outgrows the batch. Drop swap or the memory.")
  if memory and not all(a in params for a in _REFERENCE_ARGS):
    raise UserError(
        f"Loss {name!r} cannot take a cross-batch memory ({where}."
        "memory_size): it compares the batch with itself only. The pair and "
        f"triplet losses can: {', '.join(sorted(COMPOSABLE))}.")
  return Term(name, loss, call_kwargs, init_kwargs,
              float(spec.get("weight", 1.0)), "key" in params)


class Configured(NamedTuple):
  main: Term
  extras: tuple[Term, ...]
  memory_size: int

  @property
  def input(self) -> str:
    return self.main.loss.input

  def init_params(self, rng: jax.Array, **sizes) -> dict:
    """The learnable parameters of every term ({} when none has any);
    sizes: num_classes, embedding_dim."""
    def one(t: Term, key):
      if t.loss.init is None:
        return {}
      kwargs = dict(t.init_kwargs)
      kwargs.pop("num_classes", None)
      return t.loss.init(key, **sizes, **kwargs)
    params = one(self.main, rng)
    extra = {str(i): one(t, jax.random.fold_in(rng, i + 1))
             for i, t in enumerate(self.extras)}
    if any(extra.values()):
      params["extra"] = {k: v for k, v in extra.items() if v}
    return params

  def init_state(self, embedding_dim: int) -> Any:
    """The memory ({} without one)."""
    if not self.memory_size:
      return {}
    return xbm.xbm_init(self.memory_size, embedding_dim)

  def apply(self, outputs: Mapping[str, jax.Array], labels: jax.Array,
            params: dict, state: Any, key: jax.Array, *,
            mask: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """(value, new state) of the weighted sum on the model's outputs
    ("embedding", "logits")."""
    params = dict(params)
    extra_params = params.pop("extra", {})
    x = outputs[self.main.loss.input]
    if self.memory_size:
      value, state = xbm.xbm_loss(
          lambda *a, **kw: self.main(*a, params, **kw), state, x, labels,
          mask=mask, key=key)
    else:
      value = self.main(x, labels, params, mask=mask, key=key)
    value = self.main.weight * value
    for i, t in enumerate(self.extras):
      value += t.weight * t(outputs[t.loss.input], labels,
                            extra_params.get(str(i), {}), mask=mask,
                            key=jax.random.fold_in(key, i + 1))
    return value, state


def from_config(loss_config) -> Configured:
  """config.loss (a ConfigDict or a mapping) as a Configured loss.

  Raises:
    UserError: an unknown loss or piece, a combination PML refuses, a loss
      that cannot take the memory, an extra loss of the wrong shape.
  """
  memory_size = int(loss_config["memory_size"] or 0)
  name = loss_config["name"]
  if get_loss(name).input == "views" and (memory_size
                                          or _plain(loss_config["extra"])):
    raise UserError(
        f"Loss {name!r} takes two views of each example, no labels: it "
        "cannot be summed with extra losses or given a cross-batch memory "
        "(config.loss.extra, config.loss.memory_size: both take a labelled "
        "batch); leave them unset.")
  main = term(loss_config, memory=memory_size > 0)
  extras = []
  for i, spec in enumerate(_plain(loss_config["extra"]) or ()):
    where = f"config.loss.extra[{i}]"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
      raise UserError(f"{where}={spec!r} should be a dict with a loss name: "
                      "{'name': 'arcface', 'weight': 0.5, 'kwargs': {...}} "
                      f"(fields: {', '.join(EXTRA_FIELDS)}).")
    unknown = sorted(set(spec) - set(EXTRA_FIELDS))
    if unknown:
      raise UserError(f"{where} has no field {', '.join(unknown)}; its "
                      f"fields are {', '.join(EXTRA_FIELDS)}.")
    extras.append(term(spec, where=where))
  for t in (main, *extras):
    if t.loss.input not in ("embedding", "logits") and (extras or
                                                         memory_size):
      raise UserError(
          f"Loss {t.name!r} takes {t.loss.input!r}: it cannot be summed "
          "with extra losses or given a cross-batch memory (config.loss."
          "extra, config.loss.memory_size).")
  if memory_size and main.loss.input != "embedding":
    raise UserError(f"config.loss.memory_size: the memory holds embeddings, "
                    f"and loss {main.name!r} takes {main.loss.input}.")
  return Configured(main, tuple(extras), memory_size)

