"""Self-supervised use of a pair or triplet loss: pytorch-metric-learning's
`SelfSupervisedLoss(loss, symmetric)` wrapper.

Row i of `embeddings` and row i of `ref_emb` are two views (augmentations)
of example i; nothing else is a positive. The wrapped loss sees labels
arange(N):
- symmetric=True (PML's default): the loss of the 2N rows [embeddings;
  ref_emb] with labels [arange(N); arange(N)], so each view is the other's
  only positive and both sides are anchors;
- symmetric=False: the loss of the N anchors `embeddings` against the
  reference set `ref_emb` (PML's ref_emb, ref_labels), which only the losses
  that take a reference set here support.

`loss` is a loss name or `{"name": ..., **its_kwargs}`, as
`metricjax.losses.build` takes it (with symmetric=True its dict may name a
distance, reducer, regularizer or miner, which `build` composes; PML's
wrapper passes no miner). PML accepts only the losses in SUPPORTED and so
does this (a UserError otherwise).

Registered as "self_supervised" (input "views") by losses/__init__.py: it
sits above compose.py, which imports the registry. Deliberate difference
from PML: its wrapper needs the loss; the registered function defaults to
loss="ntxent" (SimCLR's form), so `build("self_supervised")` is usable.
"""

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from metricjax.errors import UserError
from metricjax.losses import compose
from metricjax.losses.pieces import parse_piece
from metricjax.losses import registry

# PML's SelfSupervisedLoss.supported_losses(), in our names.
SUPPORTED = ("angular", "circle", "contrastive",
             "generalized_lifted_structure", "intra_pair_variance",
             "lifted_structure", "multi_similarity", "ntxent",
             "signal_to_noise_ratio_contrastive", "supcon", "triplet_margin",
             "nca", "tuplet_margin")
# symmetric=False calls the REGISTRY function that takes a reference set;
# for these PML names it is registered under another name, with these
# keywords fixed (the short name `ms` mines by default, PML's loss does not).
_REFERENCE_FNS = {"multi_similarity": ("ms", {"epsilon": None}),
                  "triplet_margin": ("triplet", {})}
_PIECES = ("distance", "miner", "reducer", "regularizer")


def _reference_fn(name: str) -> tuple[str, Callable | None]:
  """(REGISTRY name, its fn) of the loss that takes a reference set for the
  PML name `name`; fn None where there is none."""
  ref_name, _ = _REFERENCE_FNS.get(name, (name, {}))
  loss = registry.REGISTRY.get(ref_name)
  if loss is None or "ref_embeddings" not in inspect.signature(
      loss.fn).parameters:
    return ref_name, None
  return ref_name, loss.fn


def _resolve(loss, symmetric: bool) -> Callable:
  """The wrapped loss as `fn(x, labels, *, mask, [ref_embeddings, ref_labels,
  ref_mask,] **rest)`; UserError for what PML or this library refuses."""
  name, kwargs = parse_piece(loss, "self_supervised loss (e.g. 'ntxent')",
                             "config.loss.kwargs.loss")
  if name not in SUPPORTED:
    raise UserError(
        f"self_supervised does not wrap {name!r}: pytorch-metric-learning's "
        f"SelfSupervisedLoss supports only {', '.join(SUPPORTED)}.")
  if symmetric:
    return compose.build(name, **kwargs)
  pieces = [p for p in _PIECES if p in kwargs]
  ref_name, fn = _reference_fn(name)
  if pieces or fn is None:
    with_ref = [n for n in SUPPORTED if _reference_fn(n)[1] is not None]
    what = f"a {' or '.join(pieces)}" if pieces else repr(name)
    raise UserError(
        "self_supervised(symmetric=False) compares the views as a reference "
        f"set, which {what} does not take here; use symmetric=True, or "
        f"symmetric=False with one of {', '.join(sorted(with_ref))} and its "
        "own keywords only.")
  fixed = _REFERENCE_FNS.get(name, (name, {}))[1]
  if set(kwargs) & set(fixed):
    raise UserError(f"Loss {name!r} takes no hyper-parameter "
                    f"{', '.join(sorted(set(kwargs) & set(fixed)))}.")
  registry.check_loss_hyperparameters(name, registry.REGISTRY[ref_name],
                                      kwargs)
  return functools.partial(fn, **kwargs, **fixed)


def self_supervised_loss(embeddings: jax.Array, ref_emb: jax.Array, *,
                         loss: Any = "ntxent", symmetric: bool = True,
                         mask: jax.Array | None = None,
                         key: jax.Array | None = None,
                         **kwargs) -> jax.Array:
  """The wrapped loss of two views' embeddings (PML's SelfSupervisedLoss).

  Args:
    embeddings: (N, D), the first view of each of N examples.
    ref_emb: (N, D), the second view of the same examples, row for row.
    loss: the wrapped loss, a name or {"name": ..., **kwargs} (see SUPPORTED).
    symmetric: both views as anchors of one 2N batch (True, PML's default),
      or embeddings as anchors against ref_emb as the reference set.
    mask: optional (N,) bool; False rows (of both views) are padding.
    key: a PRNG key for the wrapped loss's random miner; passed to it when
      it takes one (a training step always gives its loss key).
    **kwargs: passed to the wrapped loss.

  Returns:
    A float scalar.
  """
  fn = _resolve(loss, symmetric)
  if key is not None and "key" in inspect.signature(fn).parameters:
    kwargs["key"] = key
  n = embeddings.shape[0]
  labels = jnp.arange(n, dtype=jnp.int32)
  if symmetric:
    both = None if mask is None else jnp.concatenate([mask, mask])
    return fn(jnp.concatenate([embeddings, ref_emb]),
              jnp.concatenate([labels, labels]), mask=both, **kwargs)
  return fn(embeddings, labels, mask=mask, ref_embeddings=ref_emb,
            ref_labels=labels, ref_mask=mask, **kwargs)


def self_supervised(loss: Any, *, symmetric: bool = True) -> Callable:
  """`fn(embeddings, ref_emb, *, mask=None, **kwargs)`: `loss` wrapped as
  PML's `SelfSupervisedLoss(loss, symmetric)`; it takes two views'
  embeddings, row i of each a view of example i (see the module docstring).

  Raises:
    UserError: a loss PML's wrapper refuses, an unknown keyword or piece, or
      symmetric=False with a loss that takes no reference set here.
  """
  _resolve(loss, symmetric)  # refuse now, not under jit
  return functools.partial(self_supervised_loss, loss=loss,
                           symmetric=symmetric)
