"""Cross-batch memory (Wang et al., CVPR 2020) as a functional ring buffer.

The memory is a pytree of global arrays, updated inside jit with the global
batch: with a data-parallel mesh it is one replicated (or sharded) array,
never per-device state, and every device sees the same references.

`xbm_loss` follows pytorch-metric-learning's `CrossBatchMemory(loss,
embedding_size, memory_size)`: the batch is enqueued first, then the loss is
taken with the batch as anchors and the whole valid memory (this batch
included) as references, minus each anchor's pair with its own slot.
References are stored under stop_gradient, so the gradient flows through the
anchors only. PML's `enqueue_mask` mode (rows that are queued but not
anchors) is not reproduced; `mask` here drops padding from both roles.
"""

from typing import Callable

from flax import struct
import jax
import jax.numpy as jnp


@struct.dataclass
class XBMState:
  embeddings: jax.Array  # (M, D)
  labels: jax.Array  # (M,)
  valid: jax.Array  # (M,) bool, slot written at least once
  ptr: jax.Array  # () int32, next slot to write


def xbm_init(memory_size: int, dim: int, *, dtype=jnp.float32,
             label_dtype=jnp.int32) -> XBMState:
  """An empty memory of memory_size slots of dim features."""
  return XBMState(
      embeddings=jnp.zeros((memory_size, dim), dtype),
      labels=jnp.zeros((memory_size,), label_dtype),
      valid=jnp.zeros((memory_size,), bool),
      ptr=jnp.zeros((), jnp.int32))


def _slots(state: XBMState, num: int,
           mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """The slot each batch row is written to (-1 if masked), and their count."""
  memory_size = state.embeddings.shape[0]
  if num > memory_size:
    raise ValueError(f"batch of {num} rows does not fit a memory of "
                     f"{memory_size}")
  keep = jnp.ones((num,), bool) if mask is None else mask
  rank = jnp.cumsum(keep) - 1  # padding takes no slot
  slots = jnp.where(keep, (state.ptr + rank) % memory_size, -1)
  return slots.astype(jnp.int32), jnp.sum(keep).astype(jnp.int32)


def xbm_enqueue(state: XBMState, embeddings: jax.Array, labels: jax.Array,
                mask: jax.Array | None = None) -> XBMState:
  """Writes the unmasked rows over the oldest slots, in batch order."""
  memory_size = state.embeddings.shape[0]
  slots, count = _slots(state, embeddings.shape[0], mask)
  # Masked rows scatter out of range and are dropped.
  index = jnp.where(slots >= 0, slots, memory_size)
  stored = jax.lax.stop_gradient(embeddings).astype(state.embeddings.dtype)
  return XBMState(
      embeddings=state.embeddings.at[index].set(stored, mode="drop"),
      labels=state.labels.at[index].set(
          labels.astype(state.labels.dtype), mode="drop"),
      valid=state.valid.at[index].set(True, mode="drop"),
      ptr=(state.ptr + count) % memory_size)


def xbm_loss(loss_fn: Callable[..., jax.Array], state: XBMState,
             embeddings: jax.Array, labels: jax.Array, *,
             mask: jax.Array | None = None,
             **hyperparameters) -> tuple[jax.Array, XBMState]:
  """Enqueues the batch, then loss_fn of batch anchors against the memory.

  Args:
    loss_fn: a pair loss taking ref_embeddings, ref_labels, ref_mask and
      self_index (triplet_margin_loss, shadow_margin_loss, contrastive_loss,
      ntxent_loss).
    state: the memory before this batch.
    embeddings: (N, D) with N <= memory size; labels: (N,).
    mask: optional (N,) bool; False rows are neither stored nor anchors.
    **hyperparameters: passed on to loss_fn.

  Returns:
    (loss, the memory after this batch).
  """
  slots, _ = _slots(state, embeddings.shape[0], mask)
  new_state = xbm_enqueue(state, embeddings, labels, mask)
  loss = loss_fn(embeddings, labels, mask=mask,
                 ref_embeddings=new_state.embeddings,
                 ref_labels=new_state.labels, ref_mask=new_state.valid,
                 self_index=slots, **hyperparameters)
  return loss, new_state
