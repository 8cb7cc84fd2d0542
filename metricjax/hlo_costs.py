"""Flops and bytes of a compiled program, from the target's own compiler.

TPU: the executable's cost analysis. GPU: `Compiled.cost_analysis()` is
None there, so XLA's generic HLO cost analysis is run on the GPU-optimised
module; it counts each library call (cuDNN convolutions, cuBLAS GEMMs,
custom calls to XLA) as -1 flop and -1 byte, so those are replaced by
counts from the call's operand shapes: a convolution of any direction costs
its forward convolution's 2 * (batch * output positions) * filter size,
a GEMM 2 * output size * contracted size, and each moves its operands and
results once.
"""

import json
import re

import jax
import numpy as np

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+"
                          r"([\w\-]+)\((.*?)\)(.*)$")


def _arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
  """"(bf16[2,3]{1,0}, u8[0]{0})" -> [("bf16", (2, 3)), ("u8", (0,))]."""
  return [(dtype, tuple(int(d) for d in dims.split(",") if d))
          for dtype, dims in _ARRAY.findall(shape_text)
          if dtype in _DTYPE_BYTES]


def _nbytes(arrays) -> int:
  return sum(_DTYPE_BYTES[d] * int(np.prod(s)) for d, s in arrays)


def library_calls(hlo_text: str) -> list[dict]:
  """The optimised module's cuDNN / cuBLAS calls with their flops and bytes."""
  shapes, calls = {}, []
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, shape_text, op, operands, attributes = m.groups()
    shapes[name] = _arrays(shape_text)
    if op != "custom-call":
      continue
    target = re.search(r'custom_call_target="([^"]+)"', attributes)
    target = target.group(1) if target else ""
    args = [shapes.get(a.strip().lstrip("%"), []) for a in operands.split(",")
            if a.strip()]
    results = shapes[name][:1]  # The result; a workspace buffer may follow.
    flops = None
    if target.startswith("__cudnn$conv"):
      flops = _conv_flops(target, attributes, args, results)
    elif target.startswith("__cublas"):
      flops = _gemm_flops(attributes, args, results)
    if flops is not None:
      calls.append(dict(name=name, target=target, flops=flops,
                        bytes=_nbytes([a[0] for a in args if a])
                        + _nbytes(results)))
  return calls


def _conv_flops(target, attributes, args, results) -> int:
  """2 * batch * output positions * filter elements of the forward conv.

  dim_labels describe the forward convolution (input_filter->output);
  forward calls take (input, filter), backward-filter (input, d_output),
  backward-input (d_output, filter)."""
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", attributes)
  out_labels = labels.group(3)
  if "BackwardFilter" in target:
    filter_shape, output_shape = results[0][1], args[1][0][1]
  elif "BackwardInput" in target:
    filter_shape, output_shape = args[1][0][1], args[0][0][1]
  else:
    filter_shape, output_shape = args[1][0][1], results[0][1]
  # Output positions times batch: every output dim but the feature one.
  positions = np.prod([d for label, d in zip(out_labels, output_shape)
                       if label != "f"])
  return int(2 * positions * np.prod(filter_shape))


def _gemm_flops(attributes, args, results) -> int:
  config = re.search(r"backend_config=(\{.*\})", attributes)
  dims = json.loads(config.group(1))["gemm_backend_config"][
      "dot_dimension_numbers"]
  lhs = args[0][0][1]
  contracted = np.prod([lhs[int(i)]
                        for i in dims["lhs_contracting_dimensions"]])
  return int(2 * np.prod(results[0][1]) * contracted)


def program_costs(compiled, platform: str) -> dict:
  """{"flops", "bytes_accessed", "flops_source"} of one call of `compiled`
  on one device (an SPMD program is per device)."""
  if platform != "cuda":
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # Older jax: one dict per program.
      analysis = analysis[0]
    return dict(flops=float(analysis["flops"]),
                bytes_accessed=float(analysis["bytes accessed"]),
                flops_source=f"XLA:{platform.upper()} cost analysis")
  from jax._src.lib import xla_client  # pylint: disable=g-import-not-at-top
  module = compiled.runtime_executable().hlo_modules()[0]
  generic = xla_client._xla.hlo_module_cost_analysis(  # pylint: disable=protected-access
      jax.devices("cpu")[0].client, module)
  calls = library_calls(compiled.as_text())
  unknown = _count_custom_calls(compiled.as_text())
  flops = generic.get("flops", 0.0) + unknown + sum(c["flops"] for c in calls)
  nbytes = (generic.get("bytes accessed", 0.0) + unknown
            + sum(c["bytes"] for c in calls))
  library = sum(c["flops"] for c in calls)
  return dict(flops=flops, bytes_accessed=nbytes, library_flops=library,
              flops_source="XLA's HLO cost analysis of the GPU-optimised "
              f"module + {len(calls)} cuDNN/cuBLAS calls counted from their "
              "shapes")


def _count_custom_calls(hlo_text: str) -> int:
  """Each custom call counted -1 flop and -1 byte by the generic analysis."""
  return sum(1 for line in hlo_text.splitlines()
             if (m := _INSTRUCTION.match(line)) and m.group(3) == "custom-call")
