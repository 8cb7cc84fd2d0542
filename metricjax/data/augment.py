"""On-device augmentation: a batch in, a batch out, inside the train step."""

import jax
import jax.numpy as jnp


def random_crop_flip(rng: jax.Array, images: jax.Array, *, padding: int = 4,
                     flip: bool = True) -> jax.Array:
  """Per-example random crop of the zero-padded batch, then a random h-flip.

  The standard CIFAR augmentation (pad 4, crop back to H x W, mirror with
  probability 1/2). Any dtype, uint8 included: pixels are only moved.

  Args:
    rng: a jax PRNG key.
    images: (B, H, W, C).
    padding: zero border added on each side before cropping (static).
    flip: mirror left-right with probability 1/2 (static).
  """
  b, h, w, c = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  if padding > 0:
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                              (0, 0)))
    offsets = jax.random.randint(crop_rng, (b, 2), 0, 2 * padding + 1)
    crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0),
                                                  (h, w, c))
    images = jax.vmap(crop)(padded, offsets)
  if flip:
    mirror = jax.random.bernoulli(flip_rng, 0.5, (b,))
    images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1], images)
  return images
