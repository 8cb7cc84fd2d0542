"""Which XLA:CPU kernels run the library's jitted functions, per function.

jaxlib >= 0.9 hands individual convolutions, dots and reductions to YNNPACK
(`xla_cpu_experimental_ynn_fusion_type`, jax-ml/jax#37465 and #39257).
YNNPACK's weight-gradient convolution is the slow one at the models' shapes:
on a 2-core AMD EPYC (AVX2, jaxlib 0.10.2, issue 19) the weight gradient of
a 3x3 conv (256,28,28,32)->64 took 1,728 ms on YNN, 205 ms on Eigen and
138-165 ms in PyTorch, while forward and input gradient were close; with
only convolutions taken off YNN, hybrid1's four conv layers ran forward +
backward at 1.07x PyTorch's time (1.70x by default). Turning YNN off
entirely slowed batch norm + GELU (112 -> 156 ms), so dots and reductions
stay on it. "conv_eigen" (the default) is that routing; "jaxlib_default"
leaves jaxlib's own.

The routing is passed per function as compiler options (`jit` below), not
through XLA_FLAGS, so a user's program around the library is left as it is.
It is a no-op off CPU and on a jaxlib without the option.
"""

import functools
import re
from typing import Callable

import jax

from metricjax.errors import UserError

ROUTINGS = ("conv_eigen", "jaxlib_default")
DEFAULT = "conv_eigen"
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# Everything jaxlib 0.10's default gives YNN but individual convolutions.
_CONV_EIGEN = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"


@functools.cache
def option_supported(name: str = YNN_OPTION, value: str = _CONV_EIGEN) -> bool:
  """Whether this jaxlib's CPU compiler accepts compiler option name=value
  (compiles a one-op program once; an unknown option is an error). Asked
  only when jax's default backend is the CPU."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(
        1.0).compile()
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def check(routing: str) -> str:
  if routing not in ROUTINGS:
    raise UserError(f"config.xla_cpu_routing={routing!r} is not a routing; "
                    f"use one of {', '.join(map(repr, ROUTINGS))}.")
  return routing


def compiler_options(routing: str = DEFAULT, backend: str | None = None
                     ) -> dict[str, str]:
  """The compiler options of `routing` for `backend` (default: jax's)."""
  check(routing)
  backend = backend or jax.default_backend()
  if routing == "jaxlib_default" or backend != "cpu":
    return {}
  if not option_supported(YNN_OPTION, _CONV_EIGEN):
    return {}
  return {YNN_OPTION: _CONV_EIGEN}


def jit(fn: Callable, *, routing: str = DEFAULT, **jit_kwargs) -> Callable:
  """jax.jit(fn, **jit_kwargs) compiled with `routing`'s options."""
  options = compiler_options(routing)
  if options:
    jit_kwargs["compiler_options"] = options
  return jax.jit(fn, **jit_kwargs)


def convolution_kernels(compiled_text: str) -> dict[str, int]:
  """{"ynn": n, "xla": m}: convolutions in a compiled module's text
  (`compiled.as_text()`) inside YNN fusions, and those XLA runs itself."""
  computations = {}
  for block in re.split(r"\n(?=\S)", compiled_text):
    head = re.match(r"(?:ENTRY )?%(\S+)", block)
    if head:
      computations[head.group(1)] = block
  ynn_bodies = set(re.findall(
      r"calls=%([\w.\-]+), [^\n]*\"kind\":\"__ynn_fusion\"", compiled_text))
  counts = {"ynn": 0, "xla": 0}
  for name, body in computations.items():
    n = len(re.findall(r"\bconvolution\(", body))
    counts["ynn" if name in ynn_bodies else "xla"] += n
  return counts
