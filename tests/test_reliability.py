"""Preemption, crashes, device and host counts, and bad input all end boring.

Every run here is the real command line, ``python -m dualattn.train`` on the tiny config, in a
subprocess: signals, exit codes, fake devices and multi-process runs need their own process.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import tiny
from dualattn.run.checkpoint import Checkpointer
from dualattn.run.data import load_data
from dualattn.run.model import create_train_state
from dualattn.run.workdir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore:Market-1501 counts")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_paths(tmp_path_factory):
    """The tiny dataset, generated and prepared once so that runs only read it."""
    root = tmp_path_factory.mktemp("data")
    paths = root / "raw", root / "tfds"
    load_data(config_for(paths))
    return paths


def config_for(data_paths, epochs=3):
    c = tiny.get_config()
    c.dataset.root, c.dataset.data_dir = str(data_paths[0]), str(data_paths[1])
    c.optim.epochs = epochs
    return c


def command(data_paths, workdir, *overrides, epochs=3):
    return [sys.executable, "-m", "dualattn.train", "--config", "configs/tiny.py",
            "--workdir", str(workdir), f"--config.dataset.root={data_paths[0]}",
            f"--config.dataset.data_dir={data_paths[1]}", f"--config.optim.epochs={epochs}",
            *overrides]


def run(args, env=None, timeout=300, **kw):
    return subprocess.run(args, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, **kw)


def start(args, env=None, **kw):
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def saved_steps(workdir):
    return RunDir(workdir).checkpoint_steps("latest")


def wait_for(predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("timed out")


def latest_state(data_paths, workdir):
    c = config_for(data_paths)
    data = load_data(c)
    target = create_train_state(c, data.num_classes, data.sampler.steps_per_epoch).state
    state, meta, _ = Checkpointer(RunDir(workdir)).restore_latest(target)
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}, meta


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_same_state(ours, reference, rtol, skip=()):
    """Per tensor: max|a - b| <= rtol * max|b| (the parity tests' measure); step counters
    equal. Paths containing any of ``skip`` are left out."""
    assert ours.keys() == reference.keys()
    errors = {"(none)": 0.0}
    for key, y in reference.items():
        x = ours[key]
        if any(s in key for s in skip):
            continue
        if not np.issubdtype(y.dtype, np.floating):
            np.testing.assert_array_equal(x, y, err_msg=key)
        elif y.size:
            errors[key] = float(np.abs(x.astype(np.float64) - y).max()
                                / max(np.abs(y).max(), 1e-30))
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    assert worst[0][1] <= rtol, f"relative differences above {rtol:.0e}: {worst}"


@pytest.fixture(scope="module")
def straight(data_paths, tmp_path_factory):
    """A run never interrupted: three epochs in one go."""
    workdir = tmp_path_factory.mktemp("straight")
    proc = run(command(data_paths, workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_sigterm_then_sigkill_mid_save_then_resume_equals_straight(data_paths, straight,
                                                                   tmp_path):
    workdir = tmp_path / "interrupted"
    baselines = "--config.eval.baselines=True"  # measured before training, reported at the end
    # 1. SIGTERM after the first checkpoint: saves at the current step, exits 128 + 15.
    proc = start(command(data_paths, workdir, baselines))
    wait_for(lambda: saved_steps(workdir), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM at step" in out and "Traceback" not in err
    assert re.search(r"before training: mAP \d+\.\d\d % .* for the untrained network, "
                     r"\d+\.\d\d % .* for colour histograms", out)
    stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert saved_steps(workdir)[-1] == stopped_at

    # 2. Resume, then SIGKILL while a checkpoint is being written (or just after one).
    proc = start(command(data_paths, workdir, baselines))
    latest = workdir / "checkpoints" / "latest"
    wait_for(lambda: any("tmp" in p.name for p in latest.iterdir())
             or saved_steps(workdir)[-1] > stopped_at, proc)
    proc.kill()
    proc.communicate()
    assert RunDir(workdir).lock.exists()  # left by the killed trainer; the next takes it over
    survivors = saved_steps(workdir)
    assert survivors and survivors[-1] >= stopped_at

    # 3. Resume to the end: same parameters and the same log as the run never interrupted.
    proc = run(command(data_paths, workdir, baselines))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from step {survivors[-1]}" in proc.stdout
    (final,) = [line for line in proc.stdout.splitlines() if line.startswith("final: ")]
    assert re.search(r"mAP \d+\.\d\d%.*\((\d+) of \1 queries have a valid match\)$", final)
    assert "before training" not in proc.stdout  # measured once, by the first run
    assert re.search(r"^baselines: mAP \d+\.\d % after training, against \d+\.\d % for the "
                     r"same network untrained and \d+\.\d % for colour histograms",
                     proc.stdout, re.M)
    assert re.search(r"^checkpoints: the final model \(step \d+\) in .*latest; the best test "
                     r"mAP \(\d+\.\d\d %\) at step \d+ in .*best, chosen on the test set$",
                     proc.stdout, re.M)
    ours, meta = latest_state(data_paths, workdir)
    reference, ref_meta = latest_state(data_paths, straight)
    assert meta["step"] == ref_meta["step"]
    assert_same_state(ours, reference, rtol=1e-6)
    assert [r["step"] for r in rows(workdir)] == [r["step"] for r in rows(straight)]
    # TensorBoard tells the same story: what the killed runs logged past their checkpoints
    # is purged by the resumed runs, leaving each step once.
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()
    for kind, key in (("train", "loss"), ("eval", "mAP")):
        logged = [r for r in rows(workdir) if key in r]
        events = acc.Scalars(f"{kind}/{key}")
        assert [e.step for e in events] == [r["step"] for r in logged]
        assert [e.value for e in events] == pytest.approx([r[key] for r in logged], abs=1e-6)


# Biases with an exactly zero true gradient behind the BNNeck (dualattn/interop/compare.py):
# Adam steps them on rounding noise, which differs with the reduction order, i.e. the device
# count. They (and their Adam moments) are left out; everything else is compared.
ZERO_GRADIENT = ("['key_bn']['bias']", "['value_bn']['bias']")


def test_ctrl_c_with_decoding_workers_stops_cleanly(data_paths, tmp_path):
    """Ctrl-C signals the terminal's whole process group, grain's worker processes included:
    they ignore it and the trainer saves and stops as usual."""
    workdir = tmp_path / "workers"
    proc = start(command(data_paths, workdir, "--config.input.num_workers=2"),
                 start_new_session=True)
    wait_for(lambda: saved_steps(workdir), proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "stopped by SIGINT at step" in out and "Traceback" not in err


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_processes(args, devices_each, port=None):
    """Start ``args`` as processes 0 and 1 of one jax.distributed run on localhost."""
    port = port or free_port()
    return [start(args, {**fake_devices(devices_each),
                         "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                         "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}) for i in range(2)]


def fake_devices(n):
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def finish(procs):
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def test_a_step_on_one_device_four_devices_and_two_hosts_agree(data_paths, tmp_path):
    """Same global batch, seed and data: a train step on 1 process x 1 device, 1 x 4 and 2
    processes x 2 devices (gloo collectives, each process feeding only its own half of the
    batch) gives the same loss, parameters and optimizer state."""
    worker = [sys.executable, "-m", "tests.device_count_worker", str(data_paths[0]),
              str(data_paths[1])]
    results = {}
    for name, devices in (("1x1", 1), ("1x4", 4)):
        out = tmp_path / f"{name}.npz"
        proc = run([*worker, str(out), "1"], fake_devices(devices))
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = out
    results["2x2"] = tmp_path / "2x2.npz"
    finish(two_processes([*worker, str(results["2x2"]), "1"], 2))
    loaded = {k: dict(np.load(v)) for k, v in results.items()}
    assert [int(loaded[k].pop("devices")) for k in ("1x1", "1x4", "2x2")] == [1, 4, 4]
    reference = loaded.pop("1x1")
    for name, ours in loaded.items():
        np.testing.assert_allclose(ours.pop("losses"), reference["losses"], rtol=1e-5,
                                   err_msg=name)
        reference_state = {k: v for k, v in reference.items() if k != "losses"}
        # Adam's moments after one step are the gradient, scaled (mu) and squared (nu): the
        # gradients agree to 1e-5, compared as mu and as sqrt(nu) (a square doubles a
        # relative difference: the attention gate's gradient, one sum over the whole batch's
        # feature map, differs by 9e-6 between device counts, its square by 1.8e-5).
        def gradients(state):
            return {k: np.sqrt(v) if "['nu']" in k else v for k, v in state.items()
                    if "['mu']" in k or "['nu']" in k}
        assert_same_state(gradients(ours), gradients(reference_state), rtol=1e-5,
                          skip=ZERO_GRADIENT)
        assert_same_first_adam_step(ours, reference_state)


def test_bfloat16_on_one_and_four_devices_is_equally_close_to_float64(data_paths, tmp_path):
    """In bfloat16 the device count changes which bf16 roundings a step meets: BatchNorm's
    statistics are float32 sums in another order, a 1e-7 change flips a few bf16 roundings of
    the block outputs, and the flips spread through the layers (the same before the gradients
    were summed in float32). What the device count must not change is how far the step is
    from the truth: the same step in float64, from the same weights and augmented batch.
    Measured (tiny config, one step, gradients per tensor as max|a - b| / max|b|): bf16 is
    2.1e-1 (median) and 4.8e-1 (max) from float64 on one device, 2.1e-1 and 5.0e-1 on four;
    one against four differ by 6e-2 and 2.3e-1; float32 is 1.4e-6 from float64. The gradient
    sums themselves are float32 (tests/test_plan.py reads it from the compiled programs), so
    nothing here grows with the device count."""
    worker = [sys.executable, "-m", "tests.device_count_worker", str(data_paths[0]),
              str(data_paths[1])]
    runs = {}
    for name, devices, dtype in (("bf16 x1", 1, "bfloat16"), ("bf16 x4", 4, "bfloat16"),
                                 ("f64", 1, "float64")):
        out = tmp_path / f"{dtype}_{devices}.npz"
        proc = run([*worker, str(out), "1", dtype], fake_devices(devices))
        assert proc.returncode == 0, proc.stderr[-3000:]
        loaded = dict(np.load(out))
        runs[name] = {k[len(MU):]: v.astype(np.float64) for k, v in loaded.items()
                      if k.startswith(MU) and not any(z in k for z in ZERO_GRADIENT)}

    def distances(a, b):  # per gradient tensor, relative to the second's scale
        return np.array([np.abs(a[k] - b[k]).max() / np.abs(b[k]).max() for k in b
                         if np.abs(b[k]).max() > 0])

    one, four = (distances(runs[n], runs["f64"]) for n in ("bf16 x1", "bf16 x4"))
    between = distances(runs["bf16 x4"], runs["bf16 x1"])
    for stat in (np.median, np.max):
        # Equally far from the truth: within 25 % of each other (measured: 2 % and 5 %).
        assert stat(four) <= 1.25 * stat(one) and stat(one) <= 1.25 * stat(four), stat
        # And closer to each other than either is to it.
        assert stat(between) < min(stat(one), stat(four)), stat


# Paths of the saved state's named parts: a parameter under MODEL, its Adam first moment
# under MU (optax's chain: the L2 term, then Adam's state).
MODEL = "['model']"
MU = "['optimizer']['opt_state'][1][0]['mu']"


def assert_same_first_adam_step(ours, reference, rtol=1e-5):
    """Parameters after one Adam step agree to ``rtol`` of each tensor's scale, except where
    Adam is ill-conditioned: its first step is lr * g / (|g| + eps), i.e. +-lr for any
    gradient well above eps, so an element whose gradient (L2 term included) is rounding-level
    close to zero moves by an amount that rounding decides. Such elements must have a gradient
    below 1e-5 of their tensor's largest, and be rare."""
    exempt = total = 0
    for key, y in reference.items():
        moment = MU + key[len(MODEL):]
        if not key.startswith(MODEL) or moment not in reference:
            continue  # BN statistics are compared with the rest of the state below
        if any(s in key for s in ZERO_GRADIENT):
            continue
        grad = np.abs(reference[moment])
        off = np.abs(ours[key] - y) > rtol * np.abs(y).max()
        assert (grad[off] < 1e-5 * grad.max()).all(), f"{key}: differs where the gradient is real"
        exempt, total = exempt + off.sum(), total + y.size
    assert exempt <= 1e-4 * total, f"{exempt} of {total} parameters differ"
    rest = {k: v for k, v in reference.items()  # BN statistics, step counters
            if (not k.startswith(MODEL) or MU + k[len(MODEL):] not in reference)
            and "['mu']" not in k and "['nu']" not in k}  # the moments: compared as gradients
    assert_same_state({k: ours[k] for k in rest}, rest, rtol=rtol, skip=ZERO_GRADIENT)


def test_the_trainer_runs_on_two_hosts(data_paths, straight, tmp_path):
    """The whole command on 2 processes x 2 devices: per-host data, global-batch steps,
    gathered evaluation and checkpoints written by both processes. Over a whole run, rounding
    differences eventually flip a batch-hard mining choice (an argmax over near-equal
    distances), after which trajectories drift apart smoothly, so runs are compared on their
    first steps and on the evaluation, not bit for bit."""
    workdir = tmp_path / "hosts"
    finish(two_processes(command(data_paths, workdir), 2))
    ours, reference = rows(workdir), rows(straight)
    assert [r["step"] for r in ours] == [r["step"] for r in reference]
    np.testing.assert_allclose([r["loss"] for r in ours if "loss" in r][:3],
                               [r["loss"] for r in reference if "loss" in r][:3], rtol=1e-5)
    final = [r for r in ours if "mAP" in r][-1]["mAP"]
    assert final == pytest.approx([r for r in reference if "mAP" in r][-1]["mAP"], abs=0.05)
    state, meta = latest_state(data_paths, workdir)
    assert meta["step"] == latest_state(data_paths, straight)[1]["step"]


def with_file_size_limit(args, limit=200_000):
    """``args`` under a simulated full disk: no file may grow past ``limit`` bytes (writes fail
    with EFBIG; Python ignores SIGXFSZ). Set by a small exec wrapper rather than a preexec_fn,
    which would fork this multithreaded JAX process."""
    wrapper = ("import os, resource, sys; "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
               "os.execv(sys.executable, sys.argv[1:])")
    return [sys.executable, "-c", wrapper, *args]


def test_disk_full_during_a_save_keeps_the_last_checkpoint(data_paths, straight, tmp_path):
    workdir = tmp_path / "full"
    assert run(command(data_paths, workdir, epochs=1)).returncode == 0
    before_steps, before_rows = saved_steps(workdir), rows(workdir)
    proc = run(with_file_size_limit(command(data_paths, workdir, epochs=2)))
    # orbax logs the failed writes from its own threads first, a line each; the run's last
    # word is ours, and no traceback comes before it.
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: writing a checkpoint under") and "File too large" in last
    assert f"the last complete one (step {before_steps[-1]}) is intact" in last
    assert saved_steps(workdir) == before_steps
    assert rows(workdir)[:len(before_rows)] == before_rows
    # With space again, the same command resumes from the intact checkpoint and finishes.
    proc = run(command(data_paths, workdir, epochs=2))
    assert proc.returncode == 0 and f"resumed from step {before_steps[-1]}" in proc.stdout


def test_a_file_size_limit_while_the_dataset_is_first_converted(tmp_path):
    """The first run generates the synthetic dataset and converts it; the conversion cannot
    write its files: one line, and no partial conversion left behind."""
    data = tmp_path / "raw", tmp_path / "tfds"
    proc = run(with_file_size_limit(command(data, tmp_path / "run", epochs=1)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: preparing market1501 in {data[1]} failed (") \
        and "File too large" in last and "what it had written is removed" in last, last
    assert not list(data[1].rglob("*.array_record*")) and not (data[1] / "market1501").exists()
    assert data[0].is_dir()  # the generated images are kept: the next run converts them


@pytest.mark.parametrize("case,expected", [
    ("dataset", "does not exist"),
    ("pretrained_missing", "does not exist"),
    ("pretrained_format", "not in torch's zip format"),
    ("workdir", "is not writable"),
    ("other_model", "holds a run trained with other settings (model.use_sa: True in the run, "
                    "False now)"),
    ("unknown_key", "unknown config key 'nope'"),
    ("wrong_type", "invalid literal"),
    ("too_many_ids", "P=50 identities per batch, but the training set has only 8; lower P"),
    ("fewer_epochs", "has trained 36 steps (3 epochs), more than --config.optim.epochs=2"),
    ("another_root", "holds a run trained with other settings (dataset.root: "),
])
def test_bad_input_ends_in_one_line_naming_the_fix(case, expected, data_paths, straight,
                                                   tmp_path):
    workdir, extra = tmp_path / "run", []
    if case == "dataset":
        extra = [f"--config.dataset.root={tmp_path / 'no_such_folder'}",
                 f"--config.dataset.data_dir={tmp_path / 'tfds'}",
                 "--config.dataset.synthetic=False"]
    elif case == "pretrained_missing":
        extra = [f"--config.pretrained={tmp_path / 'r50.pth'}"]
    elif case == "pretrained_format":
        (tmp_path / "r50.pth").write_text("not weights")
        extra = [f"--config.pretrained={tmp_path / 'r50.pth'}"]
    elif case == "workdir":
        (tmp_path / "a_file").write_text("")
        workdir = tmp_path / "a_file" / "run"
    elif case == "other_model":
        workdir, extra = straight, ["--config.model.use_sa=False"]
    elif case == "unknown_key":
        extra = ["--config.model.nope=1"]
    elif case == "wrong_type":
        extra = ["--config.model.width=wide"]
    elif case == "too_many_ids":
        extra = ["--config.input.p=50"]
    elif case == "fewer_epochs":
        workdir, extra = straight, ["--config.optim.epochs=2"]
    elif case == "another_root":
        workdir, extra = straight, [f"--config.dataset.root={tmp_path / 'other'}"]
    before = sorted(p.relative_to(straight) for p in straight.rglob("*"))
    proc = run(command(data_paths, workdir, *extra))
    assert proc.returncode != 0
    assert expected in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.relative_to(straight) for p in straight.rglob("*")) == before
