"""Planning a GPU or TPU run with the real compilers and no device: the HLO is read right, the
FLOPs counted right, and the compiled train step sums its gradients in float32 on both the
XLA:GPU and the XLA:TPU compiler, with no collective it should not have.

The compiler test needs the jax-cuda12 plugin and libtpu, which make every JAX process that
finds them probe for the accelerators; so they live apart, in ``.compilers`` (``.ci/run``
installs them there: ``pip install --target .compilers "jax[tpu,cuda12]==<jax's version>"``),
and only the planning subprocess sees them (``DUALATTN_COMPILERS``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from dualattn.run import aot
from dualattn.run.targets import TARGETS, TargetError
from tests.helpers import assert_one_error_line, run_command

ROOT = Path(__file__).resolve().parents[1]
COMPILERS = Path(os.environ.get("DUALATTN_COMPILERS", ROOT / ".compilers"))

HLO = """
  %all-reduce-start.1 = (f32[16]{0}, bf16[8,4]{1,0}) all-reduce-start(%a, %b), channel_id=2
  %ard.1 = (f32[16]{0}, bf16[8,4]{1,0}) all-reduce-done(%ars.1), metadata={op_name="jit(f)/dot"}
  %all-gather = f32[64,256]{1,0:T(8,128)} all-gather(%c), channel_id=3, dimensions={0}
  ROOT %all-reduce.9 = s32[] all-reduce(%d), channel_id=4
  %fusion = f32[16]{0} fusion(%all-reduce-done.1), kind=kLoop
"""


def test_the_collectives_of_an_hlo_module_are_read_once_with_their_bytes():
    found = aot.collectives(HLO)
    assert [(c.op, c.arrays) for c in found] == [
        ("all-reduce", [("f32", 64), ("bf16", 64)]), ("all-gather", [("f32", 64 * 256 * 4)]),
        ("all-reduce", [("s32", 4)])]
    assert found[0].op_name == "jit(f)/dot" and found[0].bytes == 128


def test_flops_are_counted_from_the_matmuls_and_convolutions_of_the_jaxpr():
    def f(x, w, k):
        y = jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.jit(jnp.matmul)(y.reshape(y.shape[0], -1), w))

    x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    w = jnp.ones((4 * 4 * 4, 5))
    flops = aot.jaxpr_flops(jax.make_jaxpr(jax.grad(f, argnums=(1, 2)))(x, w, k).jaxpr)
    conv = 2 * (2 * 4 * 4 * 4) * (3 * 3 * 3)
    dot = 2 * 2 * 64 * 5
    # Forward; backward: the matmul's gradient for w and for its input (on the way to k),
    # the convolution's for k (not for x, whose gradient is not asked for).
    assert flops == 2 * conv + 3 * dot


def test_the_largest_batch_that_fits_follows_the_memory_slope():
    compiled = aot.Compiled("train step", 8, 32, peak_bytes=10 * 2**30, flops=4e12,
                            flops_source="compiler", collectives=[], seconds=1.0)
    plan = aot.Plan("v5e", "TPU v5e", "bfloat16", 8, compiled, compiled,
                    memory_bytes=16 * 2**30, peak_flops=2e14, gradient_bytes=0,
                    slope_bytes=2**30, fixed_bytes=6 * 2**30)
    assert plan.batch_per_device == 4 and plan.fits
    assert plan.largest_batch_per_device == 10  # 6 GiB fixed + 1 GiB per image
    assert plan.images_per_s_bound == pytest.approx(2e14 / 1e12)


def test_device_counts_a_target_cannot_have_are_refused():
    with pytest.raises(TargetError, match="GPU hosts hold 8 GPUs each"):
        TARGETS["h100"].topology(12)
    with pytest.raises(TargetError, match=r"TPU v5e slices of \[1, 4, 8"):
        TARGETS["v5e"].topology(3)
    assert TARGETS["h100"].topology(64)["topology"] == "1x8x8"
    assert TARGETS["v4"].topology(8)["chip_config_name"] == "megacore"


def test_a_missing_compiler_is_one_line_naming_the_pip_extra(monkeypatch):
    """The test environment has no plugin (they live in ``.compilers``, which the command
    finds only through DUALATTN_COMPILERS)."""
    monkeypatch.delenv("DUALATTN_COMPILERS", raising=False)
    assert_one_error_line(run_command("dualattn.plan", "--config", "configs/tiny.py",
                                      "--target", "v5e", "--nofit"),
                          'pip install "jax[tpu]==')


def test_both_compilers_sum_the_gradients_in_float32(tmp_path):
    """The tiny config's train step in bfloat16 for 8 H100s and 8 TPU v5e chips: every
    all-reduce is float32 (or an integer count), and together they carry every parameter's
    gradient in float32 and a little more (BatchNorm statistics, loss terms); the one
    all-gather is the triplet loss's global batch of features and labels (its backward a
    reduce-scatter on the GPU), and nothing else moves between the devices."""
    if not (COMPILERS / "libtpu").is_dir():
        if os.environ.get("DUALATTN_REQUIRE_COMPILERS"):
            pytest.fail(f"no compilers in {COMPILERS}; .ci/run installs them")
        pytest.skip(f"no compilers in {COMPILERS}: pip install --target {COMPILERS} "
                    f'"jax[tpu,cuda12]=={jax.__version__}"')
    out = tmp_path / "plan.json"
    env = dict(os.environ, DUALATTN_COMPILERS=str(COMPILERS))
    proc = subprocess.run([sys.executable, "-m", "dualattn.plan", "--config", "configs/tiny.py",
                           "--target", "h100", "--target", "v5e", "--dtype", "bfloat16",
                           "--devices", "8", "--nofit", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = {p["target"]: p for p in json.loads(out.read_text())["plans"]}
    assert set(plans) == {"h100", "v5e"}
    for name, plan in plans.items():
        kinds = plan["collectives"]["by_kind"]
        assert set(kinds) <= {"all-reduce", "all-gather", "reduce-scatter"}, (name, kinds)
        assert set(kinds["all-reduce"]["bytes"]) <= {"f32", "s32"}, (name, kinds)
        gradients = plan["collectives"]["gradients_f32_bytes"]
        rest = plan["collectives"]["rest_of_f32_all_reduce_bytes"]
        assert 0 <= rest < 0.05 * gradients, (name, gradients, rest)
        gathered = kinds["all-gather"]
        assert gathered["count"] == 1, (name, gathered)
        assert set(gathered["bytes"]) <= {"f32", "s32"}
        # The batch's 256-D features (and a value per image, on the GPU).
        assert 8 * 256 * 4 <= gathered["bytes"]["f32"] <= 8 * 257 * 4, (name, gathered)
        assert plan["fits"] and plan["train_step"]["flops_per_image"] > 0
        assert plan["evaluation_forward"]["collectives"] == 0
    assert "NVIDIA H100 SXM 80GB x 8, bfloat16" in proc.stdout
    assert "TPU v5e x 8, bfloat16" in proc.stdout
