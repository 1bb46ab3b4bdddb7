from dualattn import xla_flags


def test_lean_cpu_schedule_is_added_once_and_never_over_a_users_setting():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xla_flags.prefer_lean_cpu_schedule(env)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4",
                                        xla_flags.LEAN_CPU_SCHEDULE]
    assert not xla_flags.prefer_lean_cpu_schedule(env)  # already there: unchanged
    mine = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
    assert not xla_flags.prefer_lean_cpu_schedule(mine)
    assert mine["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    empty = {}
    assert xla_flags.prefer_lean_cpu_schedule(empty)
    assert empty["XLA_FLAGS"] == xla_flags.LEAN_CPU_SCHEDULE


def test_a_flag_this_jaxlib_lacks_is_never_added(monkeypatch):
    """XLA aborts the process on an unknown XLA_FLAGS entry, so an unknown flag is skipped."""
    assert xla_flags.jaxlib_knows(xla_flags.LEAN_CPU_SCHEDULE)
    assert not xla_flags.jaxlib_knows("--xla_cpu_no_such_flag_in_any_release=false")
    monkeypatch.setattr(xla_flags, "jaxlib_knows", lambda flag: False)
    env = {}
    assert not xla_flags.prefer_lean_cpu_schedule(env)
    assert env == {}
