"""Batch index samplers that run on device, inside the jitted train step.

The dataset lives on the device, so a step draws its own indices from the
step's rng: no host round trip, and a resumed run draws the same batches.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from metricjax.errors import UserError


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
  """
  members: jax.Array
  counts: jax.Array
  num_nonempty: int = flax.struct.field(pytree_node=False, default=-1)

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
               num_nonempty=int(np.count_nonzero(counts)))


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
  examples of every other class. jit-able with num_triplets static.
  """
  rng_class, rng_i, rng_u, rng_neg_class, rng_neg = jax.random.split(rng, 5)
  counts = index.counts.astype(jnp.float32)
  c = jax.random.choice(rng_class, counts.shape[0], (num_triplets,),
                        p=jnp.where(counts >= 2, counts, 0.0))
  n_c = index.counts[c]
  # Two distinct positions in the class: j = i + 1 + u (mod n), u < n - 1.
  i = jax.random.randint(rng_i, (num_triplets,), 0, n_c)
  u = jax.random.randint(rng_u, (num_triplets,), 0, n_c - 1)
  j = (i + 1 + u) % n_c
  # Negative class ~ its size, among the classes other than the anchor's.
  others = jnp.where(jnp.arange(counts.shape[0])[None] == c[:, None], 0.0, counts)
  neg_c = jax.random.categorical(rng_neg_class, jnp.log(others))
  k = jax.random.randint(rng_neg, (num_triplets,), 0, index.counts[neg_c])
  return index.members[c, i], index.members[c, j], index.members[neg_c, k]


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
