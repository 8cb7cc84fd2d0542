"""The embedding function as an ONNX model, for runtimes without JAX.

`python -m metricjax.export --format=onnx` writes it: uint8 NHWC images
(input "images", batch dimension "B" unless --batch fixes it) -> float32
embeddings (output "embedding"), the model's own preprocessing included and
its parameters and batch statistics as initializers, all in the one .onnx
file (no external-data sidecar). The metricjax export header (model
reference, sizes) is in the model's metadata_props under "metricjax".

The conversion is jax2onnx's (pip install 'metricjax[onnx]'); it traces the
same `apply(..., train=False)["embedding"]` as the jax.export artifact
(metricjax/artifact.py), so the two agree to float32 rounding.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from metricjax.errors import UserError
from metricjax.files import atomic_write
from metricjax.ops import pooling

HOW_TO_INSTALL = ("pip install 'metricjax[onnx]' (jax2onnx and onnxruntime, "
                  "the versions setup.cfg pins)")


def export_onnx(model, variables, image_shape, *, batch: int | None):
  """ModelProto of images -> model.apply(...)["embedding"], variables baked
  in (as artifact.export_embedding)."""
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top  # optional
  except ImportError as e:
    raise UserError(f"--format=onnx needs jax2onnx, which cannot be imported "
                    f"here ({e}). Install it: {HOW_TO_INSTALL}; or export "
                    "--format=jaxexport.") from None
  variables = jax.tree.map(np.asarray, jax.device_get(variables))

  def embed(images):
    return model.apply(variables, images, train=False)["embedding"]

  h, w, c = image_shape
  spec = jax.ShapeDtypeStruct(("B" if batch is None else batch, h, w, c),
                              jnp.uint8)
  try:
    with pooling.portable():
      proto = jax2onnx.to_onnx(embed, [spec], model_name="metricjax_embedding",
                               input_names=["images"],
                               output_names=["embedding"])
  except (NotImplementedError, TypeError, ValueError) as e:
    raise UserError(
        f"jax2onnx cannot convert this model ({type(e).__name__}: "
        f"{str(e)[:300]}). Export --format=jaxexport instead (it runs every "
        "model), or report the operation to jax2onnx.") from None
  _check(proto, embed, spec)
  return proto


def _check(proto, embed, spec) -> None:
  # A converter that mistranslates an op still writes a file; two images
  # through onnxruntime and JAX catch that before anyone deploys it.
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top  # optional
  except ImportError:
    return
  shape = (2 if isinstance(spec.shape[0], str) else spec.shape[0],
           *spec.shape[1:])
  images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  session = onnxruntime.InferenceSession(
      proto.SerializeToString(), providers=["CPUExecutionProvider"])
  got = session.run(None, {"images": images})[0]
  want = np.asarray(embed(images))
  err = float(np.abs(got - want).max()) if got.shape == want.shape else None
  if err is None or err > 1e-4 * max(1.0, float(np.abs(want).max())):
    raise UserError(
        f"The ONNX conversion does not compute the model: on two random "
        f"images onnxruntime gives {got.shape} embeddings differing from "
        f"JAX's {want.shape} by {err} at most. Export --format=jaxexport "
        "instead, or report the model to jax2onnx.")


def signature(proto) -> dict:
  """The header's input / output entries ({shape, dtype}) and opset."""
  import onnx  # pylint: disable=g-import-not-at-top  # jax2onnx's
  def entry(value):
    t = value.type.tensor_type
    shape = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
    return dict(shape=str(shape), dtype=str(np.dtype(dtype)))
  return dict(input=entry(proto.graph.input[0]),
              output=entry(proto.graph.output[0]),
              opset=max(o.version for o in proto.opset_import))


def write(path: str, proto, header: dict) -> int:
  """Writes the ModelProto, header in its metadata, atomically; returns the
  bytes."""
  entry = proto.metadata_props.add()
  entry.key, entry.value = "metricjax", json.dumps(header, sort_keys=True)
  data = proto.SerializeToString()
  with atomic_write(path, "wb") as f:
    f.write(data)
  return len(data)
