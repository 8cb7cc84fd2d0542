"""Deviceless compilation for TPU and NVIDIA GPU targets (metricjax.aot).

Needs the aot extra (libtpu, jax's CUDA plugin, a ptxas); skipped, saying
so, without it. .ci/run installs it.
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from helpers import load_config
from helpers import REPO


def _missing(module):
  try:
    return importlib.util.find_spec(module) is None
  except ModuleNotFoundError:
    return True


aot = pytest.importorskip("metricjax.aot")
from metricjax import accelerators  # pylint: disable=g-import-not-at-top
from metricjax import hlo_costs  # pylint: disable=g-import-not-at-top
from metricjax import parallel  # pylint: disable=g-import-not-at-top

needs_gpu = pytest.mark.skipif(
    _missing("jax_plugins.xla_cuda12") or not accelerators.ptxas(),
    reason="GPU targets need the aot extra (pip install -e '.[aot]': "
    "jax-cuda12-plugin, jax-cuda12-pjrt and ptxas)")
needs_tpu = pytest.mark.skipif(
    _missing("libtpu"), reason="TPU targets need the aot extra "
    "(pip install -e '.[aot]': libtpu)")

# Instructions that would move data to or from the host inside the step.
_HOST_TRANSFERS = ("infeed", "outfeed", "send(", "recv(", "python_cpu_callback",
                   "host_callback")


def quickstart():
  return load_config("compact_involution")


@pytest.fixture(autouse=True)
def _no_data(monkeypatch, tmp_path):
  """Compiling reads no dataset: the data directory is empty."""
  monkeypatch.setenv("METRICJAX_DATA_DIR", str(tmp_path))


@needs_gpu
def test_quickstart_fits_one_h100_and_allocates_nothing():
  live = len(jax.live_arrays())
  report = aot.compile_config(quickstart(), accelerators.get("h100"))
  assert report["fits"] and report["embed"]["fits"]
  assert report["devices"] == 1 and "H100" in report["device_kind"]
  assert 0 < report["peak_bytes"] < report["usable_bytes"]
  assert report["usable_bytes"] == int(0.75 * report["memory_bytes"])
  # Convolutions are cuDNN calls the generic analysis cannot count.
  assert 0 < report["library_flops"] < report["flops"]
  assert report["bound_seconds"] > 0
  assert report["images_per_second"] == pytest.approx(
      256 / report["bound_seconds"])
  # Shapes only: no parameter, batch or dataset was put in memory.
  assert len(jax.live_arrays()) == live


@needs_gpu
def test_eight_h100s_reduce_gradients_inside_the_step():
  config = quickstart()
  mesh = parallel.create_mesh(accelerators.devices(accelerators.get("h100:8")))
  compiled, task, _, _ = aot.compile_train_step(config, mesh)
  text = compiled.as_text()
  assert "all-reduce" in text
  assert not [t for t in _HOST_TRANSFERS if t in text]
  # Each device embeds its eighth of the global batch.
  assert task.examples_per_step == 256
  assert "[32,28,28," in text and "[256,28,28," not in text


@needs_gpu
def test_gpu_convolution_flops_counted_from_their_shapes():
  """Forward, input-gradient and filter-gradient cuDNN calls each cost the
  forward convolution's 2 * N * H * W * Cout * Kh * Kw * Cin."""
  device = accelerators.devices(accelerators.get("h100"))[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  x = jax.ShapeDtypeStruct((8, 16, 16, 32), jnp.bfloat16, sharding=sharding)
  w = jax.ShapeDtypeStruct((3, 3, 32, 48), jnp.bfloat16, sharding=sharding)

  def loss(x, w):
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(y.astype(jnp.float32) ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile()
  calls = hlo_costs.library_calls(compiled.as_text())
  forward = 2 * 8 * 16 * 16 * 48 * 3 * 3 * 32
  assert len(calls) == 3
  assert [c["flops"] for c in calls] == [forward] * 3
  costs = hlo_costs.program_costs(compiled, "cuda")
  assert costs["flops"] >= 3 * forward


@needs_gpu
def test_a_config_that_does_not_fit_is_a_result():
  tiny = dataclasses.replace(accelerators.get("h100"), memory_bytes=2**20)
  report = aot.compile_config(quickstart(), tiny)
  assert report["fits"] is False
  assert report["peak_bytes"] > 2**20


def test_a_step_the_tpu_compiler_refuses_is_a_result(monkeypatch):
  """TPU's compiler refuses a program that cannot fit (GPU's reports its
  peak): the report says so, with the memory it needed."""
  def refuse(config, mesh):
    raise jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
        "required for HLO temporaries (25.58G) exceeds available HBM "
        "(15.75G).")
  monkeypatch.setattr(aot, "compile_train_step", refuse)
  monkeypatch.setattr(accelerators, "devices",
                      lambda target: jax.devices()[:target.num_devices])
  report = aot.compile_config(quickstart(), accelerators.get("v5e:8"))
  assert report["fits"] is False and report["devices"] == 8
  assert report["temp_bytes"] == int(25.58 * 2**30)
  assert "DOES NOT FIT: needs 25.58 GiB" in aot.format_report(report)


@needs_gpu
def test_max_batch_bisects_to_the_edge_of_memory():
  small = dataclasses.replace(accelerators.get("h100"),
                              memory_bytes=400 * 2**20)
  found = aot.max_batch(quickstart(), small, limit=8192)
  best = found["max_global_batch"]
  # Multiples of the config's 8 classes x 32 images: 8 x 32m.
  assert best >= 256 and best % 256 == 0 and not found["reached_limit"]
  assert 2 <= found["compiles"] <= 8
  one_more = aot.with_batch(quickstart(), best // 256 + 1)
  assert one_more.batch_size == best + 256
  assert not aot.compile_config(one_more, small)["fits"]


@needs_tpu
@pytest.mark.slow
def test_quickstart_compiles_for_four_v5e_chips():
  report = aot.compile_config(quickstart(), accelerators.get("v5e:4"))
  assert report["devices"] == 4 and "v5" in report["device_kind"].lower()
  assert report["fits"] and report["flops"] > 0
  assert report["flops_source"].startswith("XLA:TPU")


def _cli(*args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  env.pop("JAX_PLATFORMS", None)  # The command sets it itself.
  return subprocess.run([sys.executable, "-m", "metricjax.aot", *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)


@needs_gpu
def test_cli_writes_the_report(tmp_path):
  out = tmp_path / "aot.json"
  run = _cli("--config=configs/compact_involution.py", "--target=h100",
             f"--json={out}")
  assert run.returncode == 0, run.stderr[-2000:]
  [report] = json.loads(out.read_text())
  for key in ("target", "devices", "device_kind", "argument_bytes",
              "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes",
              "memory_bytes", "fits", "flops", "bytes_accessed",
              "bound_seconds", "images_per_second", "compile_seconds"):
    assert key in report
  assert "lower bound on the step time" in run.stdout


@pytest.mark.parametrize("args, message", [
    (("--target=h300",), "Unknown target 'h300'"),
    (("--target=h100:8", "--config.sampler=uniform", "--config.batch_size=100"),
     "does not split evenly"),
    (("--target=h100", "--config.dataset=idx:/nowhere"),
     "compiling without the data"),
])
def test_bad_input_is_one_paragraph_and_exit_2(args, message):
  if "h100" in args[0] and (_missing("jax_plugins.xla_cuda12")
                            or not accelerators.ptxas()):
    pytest.skip("needs the aot extra's CUDA plugin")
  run = _cli("--config=configs/compact_involution.py", *args)
  assert run.returncode == 2, run.stderr[-2000:]
  assert message in run.stderr
  assert "Traceback" not in run.stderr


def test_every_target_has_its_figures():
  for target in accelerators.TARGETS.values():
    assert target.memory_bytes > 2**33
    assert set(target.peak_flops) == {"bfloat16", "float32"}
    assert target.bandwidth > 5e11
    if target.platform == "cuda":
      assert os.path.exists(os.path.join(accelerators.GPU_SPECS_DIR,
                                         target.spec_file))
  assert accelerators.get("v5e:8").num_devices == 8
  assert accelerators.get("h100:8").num_devices == 8
  with pytest.raises(Exception, match="Known targets"):
    accelerators.get("v7")


def test_library_calls_parse_a_gemm():
  text = """
  %p0 = f32[64,128]{1,0} parameter(0)
  %p1 = f32[128,32]{1,0} parameter(1)
  %gemm = (f32[64,32]{1,0}, s8[4194304]{0}) custom-call(%p0, %p1), custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  """
  [call] = hlo_costs.library_calls(text)
  assert call["flops"] == 2 * 64 * 32 * 128
  assert call["bytes"] == 4 * (64 * 128 + 128 * 32 + 64 * 32)
