import subprocess
import sys

from dualattn.run import xla_flags

CHECKED = xla_flags.CHECKED_JAXLIB[0]


def test_cpu_flags_are_added_once_and_never_over_a_users_setting():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xla_flags.prefer_cpu_flags(env, CHECKED) == list(xla_flags.CPU_FLAGS)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4",
                                        *xla_flags.CPU_FLAGS]
    assert xla_flags.prefer_cpu_flags(env, CHECKED) == []  # already there: unchanged
    mine = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true "
                         "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
    assert xla_flags.prefer_cpu_flags(mine, CHECKED) == []
    assert mine["XLA_FLAGS"].endswith("ynn_fusion_type=individual_dot")
    empty = {}
    assert xla_flags.prefer_cpu_flags(empty, CHECKED) == list(xla_flags.CPU_FLAGS)
    assert empty["XLA_FLAGS"] == " ".join(xla_flags.CPU_FLAGS)


def test_releases_outside_the_checked_range_get_no_flags():
    """XLA aborts on an unknown XLA_FLAGS entry or enum value: an unchecked release is left
    with XLA's defaults."""
    first, past_last = xla_flags.CHECKED_JAXLIB
    for version in [(first[0], first[1] - 1), past_last, (past_last[0] + 1, 0)]:
        env = {}
        assert xla_flags.prefer_cpu_flags(env, version) == []
        assert env == {}
    assert xla_flags.cpu_flags_supported(first)


def test_the_installed_jaxlib_starts_with_the_flags_it_is_given():
    """Whatever prefer_cpu_flags adds for this jaxlib, a fresh process starts its backend
    with it (an unknown flag would abort it)."""
    code = ("from dualattn.run import xla_flags; added = xla_flags.prefer_cpu_flags(); "
            "import jax; jax.numpy.ones(2).block_until_ready(); print(len(added))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == (len(xla_flags.CPU_FLAGS)
                                           if xla_flags.cpu_flags_supported() else 0)
