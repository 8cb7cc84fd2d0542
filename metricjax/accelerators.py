"""The accelerators metricjax compiles for without having them: each target's
topology and its datasheet figures, and its devices for deviceless
(ahead-of-time) compilation through `jax.experimental.topologies`.

TPU targets need libtpu (`jax[tpu]`), GPU targets jax's CUDA plugin and a
`ptxas` (`pip install -e '.[aot]'` brings all three). GPU targets are
described by a GpuTargetConfigProto file (metricjax/gpu_specs/). The CUDA
plugin registers itself only when jax skips its CUDA version check, which
it does when JAX_PLATFORMS excludes cuda: `metricjax.aot` sets
JAX_PLATFORMS=cpu itself.
"""

import dataclasses
import functools
import os
import shutil

from metricjax.errors import one_line
from metricjax.errors import UserError

GPU_SPECS_DIR = os.path.join(os.path.dirname(__file__), "gpu_specs")

# Datasheet sources (peak figures are dense, without sparsity):
# - TPU v4, v5e, v5p, v6e: Cloud TPU documentation, "TPU versions" pages
#   (per chip: bf16 peak, HBM capacity, HBM bandwidth).
# - H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet (BF16 989 TFLOP/s,
#   TF32 495 TFLOP/s dense, 80 GB HBM3, 3.35 TB/s).
# - H200 SXM: NVIDIA H200 datasheet (the H100's compute, 141 GB HBM3e,
#   4.8 TB/s).
# - A100 SXM4 80GB: NVIDIA A100 datasheet (BF16 312, TF32 156 TFLOP/s,
#   2,039 GB/s).
# - B200: NVIDIA HGX B200 datasheet, per GPU (BF16 2.25 PFLOP/s, TF32 1.125
#   PFLOP/s dense, 180 GB HBM3e, 8 TB/s).
# Memory: TPU, the datasheet's HBM in GiB; GPU, the device_memory_size of
# the spec file (what the device reports). jax on a GPU preallocates 75% of
# it by default (XLA_PYTHON_CLIENT_MEM_FRACTION; Target.usable_bytes).
# float32: XLA's default matmul and convolution precision runs float32 on
# TPU as one bfloat16 pass and on Ampere and later GPUs as TF32, so the
# float32 peak is the bfloat16 peak on TPU and the TF32 peak on GPU.
TB = 1e12


@dataclasses.dataclass(frozen=True)
class Target:
  name: str  # Short name: "v5e:8", "h100".
  platform: str  # "tpu" or "cuda".
  topology: str  # TPU topology name, or GPU "partitions x hosts x devices".
  chip: str  # What a person calls one device.
  memory_bytes: int  # Per device (HBM).
  peak_flops: dict  # compute dtype -> FLOP/s per device.
  bandwidth: float  # HBM bytes/s per device.
  spec_file: str = ""  # GPU: GpuTargetConfigProto in GPU_SPECS_DIR.

  @property
  def usable_bytes(self) -> int:
    """What a jax program may use: all of a TPU's HBM; on a GPU the 75%
    that jax preallocates by default (XLA_PYTHON_CLIENT_MEM_FRACTION), which
    is also the limit XLA's GPU compiler rematerialises down to."""
    return self.memory_bytes if self.platform == "tpu" else int(
        0.75 * self.memory_bytes)

  @property
  def num_devices(self) -> int:
    dims = self.topology.split(":")[-1].split("x")
    count = 1
    for d in dims:
      count *= int(d)
    return count


def _tpu(name, topology, chip, gib, bf16_tflops, gbps):
  return Target(name, "tpu", topology, chip, gib * 2**30,
                {"bfloat16": bf16_tflops * TB, "float32": bf16_tflops * TB},
                gbps * 1e9)


def _gpu(name, devices, chip, spec, memory_bytes, bf16_tflops, tf32_tflops,
         tbps):
  return Target(name, "cuda", f"1x1x{devices}", chip, memory_bytes,
                {"bfloat16": bf16_tflops * TB, "float32": tf32_tflops * TB},
                tbps * TB, spec_file=spec)


TARGETS = {t.name: t for t in (
    _tpu("v5e:1", "v5e:1x1", "TPU v5e", 16, 197, 819),
    _tpu("v5e:4", "v5e:2x2", "TPU v5e", 16, 197, 819),
    _tpu("v5e:8", "v5e:2x4", "TPU v5e", 16, 197, 819),
    _tpu("v4:4", "v4:2x2x1", "TPU v4", 32, 275, 1228),
    _tpu("v5p:4", "v5p:2x2x1", "TPU v5p", 95, 459, 2765),
    _tpu("v6e:4", "v6e:2x2", "TPU v6e", 32, 918, 1640),
    _gpu("h100", 1, "H100 SXM 80GB", "h100_sxm.txtpb", 84978434048, 989, 495,
         3.35),
    _gpu("h100:8", 8, "H100 SXM 80GB", "h100_sxm.txtpb", 84978434048, 989,
         495, 3.35),
    _gpu("h200", 1, "H200 SXM 141GB", "h200_sxm.txtpb", 143771336704, 989,
         495, 4.8),
    _gpu("a100", 1, "A100 SXM4 80GB", "a100_sxm_80.txtpb", 85100068864, 312,
         156, 2.039),
    _gpu("b200", 1, "B200", "b200.txtpb", 191503138816, 2250, 1125, 8.0),
)}


def get(name: str) -> Target:
  if name not in TARGETS:
    raise UserError(f"Unknown target {name!r}. Known targets: "
                    f"{', '.join(TARGETS)}.")
  return TARGETS[name]


def parse(names: str) -> list[Target]:
  """"v5e:1,h100" -> the targets, in order."""
  targets = [get(n.strip()) for n in names.split(",") if n.strip()]
  if not targets:
    raise UserError(f"--target={names!r} names no target; known: "
                    f"{', '.join(TARGETS)}.")
  return targets


def devices(target: Target) -> list:
  """The target's devices, for a Mesh to compile against (not to run on)."""
  return list(_topology(target.name).devices)


@functools.cache
def _topology(name: str):
  target = TARGETS[name]
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if target.platform == "tpu":
    _require("libtpu", "jax[tpu]")
    kwargs = {}
    if target.num_devices == 1:
      kwargs["chips_per_host_bounds"] = (1, 1, 1)
    make = lambda: topologies.get_topology_desc(target.topology, "tpu",
                                                **kwargs)
  else:
    _require("jax_plugins.xla_cuda12", "jax-cuda12-plugin")
    if not ptxas():
      raise UserError(
          f"Compiling for {target.name} needs NVIDIA's ptxas, found neither "
          "on PATH nor in the nvidia-cuda-nvcc-cu12 wheel: "
          "`pip install -e '.[aot]'` installs the wheel (or put a CUDA "
          "toolkit's bin/ on PATH).")
    with open(os.path.join(GPU_SPECS_DIR, target.spec_file)) as f:
      spec = f.read()
    make = lambda: topologies.get_topology_desc(
        "", platform="cuda", target_config=spec, topology=target.topology)
  try:
    return make()
  except Exception as e:  # NotImplementedError, XlaRuntimeError, ...
    hint = ""
    if target.platform == "cuda":
      hint = (" The CUDA plugin registers only when jax skips its CUDA "
              "check on a machine without CUDA: start Python with "
              "JAX_PLATFORMS=cpu (python -m metricjax.aot does) or "
              "JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1.")
    raise UserError(f"Could not describe the {target.name} topology "
                    f"({target.topology}): {one_line(e)}.{hint}") from e


def ptxas() -> str | None:
  """The ptxas XLA will find: the nvcc wheel's, else one on PATH."""
  try:
    from nvidia.cuda_nvcc import __path__ as nvcc_path  # pylint: disable=g-import-not-at-top
    for root in nvcc_path:
      candidate = os.path.join(root, "bin", "ptxas")
      if os.access(candidate, os.X_OK):
        return candidate
  except ImportError:
    pass
  return shutil.which("ptxas") or next(
      (p for p in ("/usr/local/cuda/bin/ptxas",) if os.access(p, os.X_OK)),
      None)


def _require(module: str, package: str) -> None:
  import importlib.util  # pylint: disable=g-import-not-at-top
  try:
    found = importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    found = False
  if not found:
    raise UserError(
        f"Compiling for this target needs {package}, which is not installed. "
        "Install the ahead-of-time extra, pinned to your jax: "
        "`pip install -e '.[aot]'` (libtpu, jax's CUDA plugin and ptxas); "
        "no accelerator is needed.")
