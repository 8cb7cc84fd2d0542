"""The training batch samplers: the one definition of a step's example
indices, whatever the data's placement.

Step s's indices are a pure function of (seed, s): `step_key` and
`batch_keys` derive the step's keys (the only place that does), and a
sampler (`make_index_sampler`: class-balanced, uniform or explicit
triplets) maps the index key and the split's `ClassIndex` to int32
indices. When the split lives on the devices the sampler runs there,
inside the jitted training step (no host round trip). When it is streamed
(data/stream.py, data/photo_pipeline.py), `HostSampler` runs the same
jitted function on this host's CPU from the same keys, so both placements
draw the same batches, and a resumed run the batches an uninterrupted one
draws: placement is a speed choice, not a different run.

Same results on every backend: threefry's random bits are exact integer
arithmetic, uniforms are made from them by bit operations, and the
samplers use only comparisons, integer arithmetic and `lax.top_k` (whose
ties, documented, go to the lower index); no transcendental or float
reduction whose rounding could differ between a CPU and an accelerator.
"""

import functools
import threading
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from metricjax.errors import UserError


def step_key(seed_key: jax.Array, step) -> jax.Array:
  """The key of the training step taken from the train state's `step`
  (0 for a run's first step); seed_key is jax.random.key(config.seed)."""
  return jax.random.fold_in(seed_key, step)


def batch_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A step's key -> (index key, augmentation key): the first draws the
  batch's example indices, the second whatever a task does to the batch
  (augmentation, a caption per image)."""
  index_key, other_key = jax.random.split(key)
  return index_key, other_key


def loss_key(key: jax.Array) -> jax.Array:
  """A step's key -> the key of its loss's random pieces (a random miner).
  Folded in, not a third split: the batches stay those of batch_keys."""
  return jax.random.fold_in(key, 2)


@flax.struct.dataclass
class ClassIndex:
  """Each class's example indices, padded to the largest class.

  Memory is num_classes x largest class, fine for the balanced datasets this
  serves; heavily imbalanced ones would want a CSR layout instead.

  Attributes:
    members: int32 (num_classes, max_count); row c starts with the indices of
      class c in increasing order, then padding (0, never sampled).
    counts: int32 (num_classes,), members per class.
    num_nonempty: classes with >= 1 member (static, checked at trace time).
    num_examples: examples in the split (static; the uniform sampler's range).
  """
  members: jax.Array
  counts: jax.Array
  num_nonempty: int = flax.struct.field(pytree_node=False, default=-1)
  num_examples: int = flax.struct.field(pytree_node=False, default=-1)

  @classmethod
  def from_labels(cls, labels: np.ndarray, num_classes: int) -> "ClassIndex":
    """Builds the index on host from int labels in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.all((labels >= 0) & (labels < num_classes)):
      raise ValueError(f"labels must be 1-D ints in [0, {num_classes}), got "
                       f"shape {labels.shape}")
    counts = np.bincount(labels, minlength=num_classes).astype(np.int32)
    order = np.argsort(labels, kind="stable").astype(np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    width = max(int(counts.max(initial=0)), 1)
    members = np.zeros((num_classes, width), np.int32)
    rank = np.arange(labels.size) - starts[labels[order]]
    members[labels[order], rank] = order
    return cls(members=members, counts=counts,
               num_nonempty=int(np.count_nonzero(counts)),
               num_examples=int(labels.size))


def class_balanced_batch(rng: jax.Array, index: ClassIndex, *,
                         classes_per_batch: int,
                         samples_per_class: int) -> jax.Array:
  """P distinct classes x K examples each: int32 (P*K,) example indices.

  The P classes are uniform among non-empty classes, without replacement.
  A class with >= K members gives K distinct examples. A smaller class gives
  all its members in random order, repeated cyclically up to K (sampling with
  replacement that never drops a member, so it keeps the most positives).
  Rows are grouped by class: [c0 x K, c1 x K, ...].

  Args:
    rng: a jax PRNG key.
    index: ClassIndex of the dataset.
    classes_per_batch: P (static).
    samples_per_class: K (static).
  """
  p, k = classes_per_batch, samples_per_class
  num_classes, max_count = index.members.shape
  available = index.num_nonempty if index.num_nonempty >= 0 else num_classes
  if not 1 <= p <= available:
    raise UserError(f"A class-balanced batch needs {p} distinct classes but "
                    f"the dataset has {available} classes with examples. "
                    "Lower batch_size or raise samples_per_class.")
  # jnp: a host-built (numpy) index may be closed over instead of passed in.
  members, all_counts = jnp.asarray(index.members), jnp.asarray(index.counts)
  class_rng, member_rng = jax.random.split(rng)

  # Choice without replacement = top-P of iid keys; empty classes never win.
  # (Equal keys go to the lower index, as lax.top_k documents: the same
  # batch on every backend.)
  class_keys = jax.random.uniform(class_rng, (num_classes,))
  class_keys = jnp.where(all_counts > 0, class_keys, -jnp.inf)
  _, classes = jax.lax.top_k(class_keys, p)
  counts = all_counts[classes]  # (P,) all >= 1.

  # Top-K of iid keys over each padded row is a random K-subset of the
  # members; ranking the padding last. Width >= K so top_k is defined.
  width = max(max_count, k)
  member_keys = jax.random.uniform(member_rng, (p, width))
  member_keys = jnp.where(jnp.arange(width) < counts[:, None], member_keys,
                          -jnp.inf)
  _, order = jax.lax.top_k(member_keys, k)  # (P, K); first min(c, K) are real.
  # Slots past a small class's count cycle back over its real members.
  slot = jnp.arange(k)[None, :] % counts[:, None]
  positions = jnp.take_along_axis(order, slot, axis=1)
  rows = members[classes]
  batch = jnp.take_along_axis(rows, positions, axis=1)
  return batch.reshape(-1).astype(jnp.int32)


def uniform_batch(rng: jax.Array, num_examples: int,
                  batch_size: int) -> jax.Array:
  """batch_size distinct example indices, uniform: int32 (batch_size,).

  Without replacement: a duplicate would be a trivially perfect positive
  pair for pair losses.
  """
  if not 1 <= batch_size <= num_examples:
    raise UserError(f"batch_size={batch_size} must be between 1 and the "
                    f"number of training examples ({num_examples}).")
  # Top-B of iid keys: a uniform B-subset, with no full permutation of N.
  _, idx = jax.lax.top_k(jax.random.uniform(rng, (num_examples,)), batch_size)
  return idx.astype(jnp.int32)


def random_triplets(rng: jax.Array, index: ClassIndex,
                    num_triplets: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(anchor, positive, negative) index arrays of explicit random triplets.

  The anchor is uniform over the examples of classes with >= 2 members, the
  positive another member of its class, the negative uniform over the
  examples of every other class. jit-able with num_triplets static. Integer
  arithmetic only (an example is drawn as its rank in the class-sorted
  order), so every backend draws the same triplets.
  """
  rng_anchor, rng_u, rng_neg = jax.random.split(rng, 3)
  counts = jnp.asarray(index.counts)
  members = jnp.asarray(index.members)
  t = (num_triplets,)

  def locate(rank, sizes):
    """(class, position in it) of the rank-th example, classes laid out in
    order with `sizes` examples each."""
    ends = jnp.cumsum(sizes)
    c = jnp.searchsorted(ends, rank, side="right")
    return c, rank - (ends[c] - sizes[c])

  # Anchor: uniform over the examples of classes with >= 2 members.
  eligible = jnp.where(counts >= 2, counts, 0)
  c, i = locate(jax.random.randint(rng_anchor, t, 0, eligible.sum()), eligible)
  n_c = counts[c]
  # Two distinct positions in the class: j = i + 1 + u (mod n), u < n - 1.
  j = (i + 1 + jax.random.randint(rng_u, t, 0, n_c - 1)) % n_c
  # Negative: uniform over the examples outside the anchor's class, i.e. a
  # rank among the other N - n_c examples, stepping over the anchor's class.
  r = jax.random.randint(rng_neg, t, 0, counts.sum() - n_c)
  start = jnp.cumsum(counts)[c] - n_c
  neg_c, k = locate(jnp.where(r >= start, r + n_c, r), counts)
  return members[c, i], members[c, j], members[neg_c, k]


def make_index_sampler(sampler: str, *, batch_size: int, num_classes: int,
                       samples_per_class: int | None = None) -> Callable:
  """-> sample_indices(key, index: ClassIndex): int32 example indices of a
  step's batch, jit-able; one definition for both placements.

  sampler: "balanced" (batch_size = P classes x samples_per_class, checked
  by check_batch_shape against num_classes non-empty classes), "uniform"
  (batch_size distinct examples) or "triplets" (batch_size explicit
  triplets: 3 * batch_size indices, anchors, then positives, then
  negatives).
  """
  if sampler == "triplets":
    return lambda key, index: jnp.concatenate(
        random_triplets(key, index, batch_size))
  if sampler == "balanced":
    p, k = check_batch_shape(batch_size, samples_per_class, num_classes)
    return functools.partial(class_balanced_batch, classes_per_batch=p,
                             samples_per_class=k)
  if sampler == "uniform":
    def uniform(key, index):
      if index.num_examples < 0:
        raise ValueError("ClassIndex.num_examples is unset: build the index "
                         "with ClassIndex.from_labels.")
      return uniform_batch(key, index.num_examples, batch_size)
    return uniform
  raise UserError(f"config.sampler={sampler!r}: use 'balanced' (P classes "
                  "x K images), 'uniform', or 'triplets' (explicit triplets).")


class HostSampler:
  """A jit-able sampler evaluated on this host's CPU: (seed, step) -> the
  numpy example indices the devices would draw at that step.

  The streaming paths call it once per step from their reader threads: the
  program is compiled once, here (so an impossible batch is an error before
  any data is read), on small inputs (the class index and the keys), and
  is thread-safe. Pickled (grain's worker processes), it carries the index
  as numpy and compiles again on first use, with the parent's PRNG
  settings; such a process must compute on the CPU only
  (`host_only_worker_init`).

  Args:
    sample_indices: (key, index: ClassIndex) -> int32 indices, as
      make_index_sampler returns.
    index: the split's ClassIndex.
  """

  def __init__(self, sample_indices: Callable, index: ClassIndex):
    self._fn = sample_indices
    self._index = jax.tree.map(np.asarray, index)  # Pickled as numpy.
    self._impl = str(jax.config.jax_default_prng_impl)
    self._partitionable = bool(jax.config.jax_threefry_partitionable)
    self.__setstate__({})
    self._compile()

  @classmethod
  def from_labels(cls, sampler: str, labels: np.ndarray, num_classes: int, *,
                  batch_size: int,
                  samples_per_class: int | None = None) -> "HostSampler":
    """make_index_sampler(sampler, ...) over a split's int labels."""
    return cls(make_index_sampler(sampler, batch_size=batch_size,
                                  num_classes=num_classes,
                                  samples_per_class=samples_per_class),
               ClassIndex.from_labels(labels, num_classes))

  def __getstate__(self):
    return {k: self.__dict__[k]
            for k in ("_fn", "_index", "_impl", "_partitionable")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
    self._program = None  # (compiled, CPU device, index on it), on first use.
    self._keys = {}

  def _compile(self):
    with self._lock:
      if self._program is None:
        cpu = jax.local_devices(backend="cpu")[0]
        index = jax.device_put(self._index, cpu)
        fn = lambda seed_key, step, index: self._fn(
            batch_keys(step_key(seed_key, step))[0], index)
        seed_key = jax.device_put(jax.random.key(0, impl=self._impl), cpu)
        with jax.threefry_partitionable(self._partitionable):
          compiled = jax.jit(fn).lower(seed_key, np.int32(0), index).compile()
        self._program = compiled, cpu, index
      return self._program

  def __call__(self, seed: int, step: int) -> np.ndarray:
    """The indices of the step taken from train state step `step` (0 for
    the first) of a run seeded `seed`."""
    compiled, cpu, index = self._program or self._compile()
    if seed not in self._keys:
      self._keys[seed] = jax.device_put(
          jax.random.key(seed, impl=self._impl), cpu)
    return np.asarray(compiled(self._keys[seed], np.int32(step), index))


def host_only_worker_init(*_) -> None:
  """grain worker_init_fn: the worker computes (HostSampler) on the CPU
  only, never initialising the accelerators its parent holds."""
  jax.config.update("jax_platforms", "cpu")


def check_batch_shape(batch_size: int, samples_per_class: int,
                      num_classes: int) -> tuple[int, int]:
  """(P, K) for a batch of P classes x K samples, or a UserError saying why not.

  num_classes should count classes that have examples in the split.
  """
  b, k = batch_size, samples_per_class
  if not isinstance(b, (int, np.integer)) or b < 1:
    raise UserError(f"config field batch_size={b!r} must be a positive integer "
                    f"(a multiple of samples_per_class={k!r}).")
  if not isinstance(k, (int, np.integer)) or k < 2:
    raise UserError(
        f"config field samples_per_class={k!r} must be an integer >= 2: with "
        "fewer than 2 samples of a class in the batch no anchor has a "
        "positive. Set samples_per_class to 2 or more (4 is common) and "
        "batch_size to a multiple of it.")
  if b % k:
    lower, higher = b // k * k, (b // k + 1) * k
    sizes = f"{lower} or {higher}" if lower else f"{higher} or more"
    raise UserError(
        f"config field batch_size={b} is not a multiple of samples_per_class="
        f"{k}: a class-balanced batch is P classes x {k} samples. Use "
        f"batch_size {sizes}, or change samples_per_class.")
  p = b // k
  if p < 2:
    raise UserError(
        f"batch_size={b} with samples_per_class={k} gives a single class per "
        "batch, so there are no negatives. Make batch_size at least "
        f"{2 * k} (2 x samples_per_class).")
  if p > num_classes:
    raise UserError(
        f"batch_size={b} / samples_per_class={k} asks for {p} distinct classes "
        f"per batch, but the dataset has only {num_classes}. Lower batch_size "
        f"to at most {num_classes * k} or raise samples_per_class.")
  return int(p), int(k)
