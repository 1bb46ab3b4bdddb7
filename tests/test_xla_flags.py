from dualattn import xla_flags


def test_cpu_flags_are_added_once_and_never_over_a_users_setting():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xla_flags.prefer_cpu_flags(env) == list(xla_flags.CPU_FLAGS)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4",
                                        *xla_flags.CPU_FLAGS]
    assert xla_flags.prefer_cpu_flags(env) == []  # already there: unchanged
    mine = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true "
                         "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
    assert xla_flags.prefer_cpu_flags(mine) == []
    assert mine["XLA_FLAGS"].endswith("ynn_fusion_type=individual_dot")
    empty = {}
    assert xla_flags.prefer_cpu_flags(empty) == list(xla_flags.CPU_FLAGS)
    assert empty["XLA_FLAGS"] == " ".join(xla_flags.CPU_FLAGS)


def test_a_flag_or_value_this_jaxlib_lacks_is_never_added(monkeypatch):
    """XLA aborts the process on an unknown XLA_FLAGS entry or enum value, so those are
    skipped."""
    for flag in xla_flags.CPU_FLAGS:
        assert xla_flags.jaxlib_knows(flag), flag
    assert not xla_flags.jaxlib_knows("--xla_cpu_no_such_flag_in_any_release=false")
    assert not xla_flags.jaxlib_knows(
        "--xla_cpu_experimental_ynn_fusion_type=individual_dot,no_such_fusion_type")
    monkeypatch.setattr(xla_flags, "jaxlib_knows", lambda flag: False)
    env = {}
    assert xla_flags.prefer_cpu_flags(env) == []
    assert env == {}


def test_where_cpu_convolutions_run_follows_the_last_fusion_type_flag():
    assert xla_flags.cpu_convolutions_in_ynnpack({})  # XLA's default
    assert xla_flags.cpu_convolutions_in_ynnpack({"XLA_FLAGS": "--xla_cpu_ftz=true"})
    ours = {"XLA_FLAGS": xla_flags.EIGEN_CPU_CONVOLUTIONS}
    assert not xla_flags.cpu_convolutions_in_ynnpack(ours)
    later = {"XLA_FLAGS": xla_flags.EIGEN_CPU_CONVOLUTIONS
             + " --xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution"}
    assert xla_flags.cpu_convolutions_in_ynnpack(later)
