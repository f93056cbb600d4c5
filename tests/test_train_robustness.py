"""The run folder survives crashes: metrics.jsonl always matches the checkpoints, Ctrl-C
stops at a step boundary, and fmi_jax.train draws no figures (it does not import
plotting)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock

import jax
import numpy as np
import pytest

from fmi_jax import train
from fmi_jax.train import loop as loop_lib
from fmi_jax.train import trainer as trainer_lib

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"epoch_time_s", "images_per_s", "compile_s"}  # differ from run to run


def lines_of(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_importing_train_imports_no_plotting():
    code = (
        "import sys, fmi_jax.train\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' "
        "or m.startswith('fmi_jax.plotting') or m.startswith('fmi_jax.studies'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_crash_between_checkpoint_and_line_is_reconciled(tmp_path, synthetic_config, synthetic_run):
    config = synthetic_config(num_epochs=2)  # the config of the uninterrupted synthetic_run
    real_append = loop_lib._append_jsonl

    def crash_before_second_line(path, record):
        if record["epoch"] == 2:
            raise OSError("simulated crash after the checkpoint, before the line")
        real_append(path, record)

    workdir = tmp_path / "run"
    with mock.patch.object(loop_lib, "_append_jsonl", crash_before_second_line):
        with pytest.raises(OSError, match="simulated crash"):
            train.train_and_evaluate(config, workdir)
    assert train.Checkpoints(workdir / "checkpoints", read_only=True).latest_epoch() == 2
    assert [r["epoch"] for r in lines_of(workdir)] == [1]

    result = train.train_and_evaluate(config, workdir)  # nothing left to train: reconciles
    assert result.train_step_compiles == 0
    got, want = lines_of(workdir), lines_of(synthetic_run)
    assert [r["epoch"] for r in got] == [1, 2]
    assert without_timing(got) == without_timing(want)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert isinstance(got[1]["epoch"], int) and isinstance(got[1]["step"], int)


def test_torn_last_line_is_repaired_from_the_checkpoint(tmp_path, synthetic_config, synthetic_run):
    shutil.copytree(synthetic_run, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "metrics.jsonl"
    original = path.read_text()
    first, second = original.splitlines()
    path.write_text(first + "\n" + second[: len(second) // 2])  # a crash mid-append

    train.train_and_evaluate(synthetic_config(num_epochs=2), tmp_path)
    repaired = lines_of(tmp_path)
    # The checkpoint recorded the very line that was torn: every field comes back.
    assert repaired == [json.loads(first), json.loads(second)]
    assert path.read_text().endswith("\n")


class _FakeCheckpoints:
    def __init__(self, metrics_by_epoch):
        self._metrics = metrics_by_epoch

    def epochs(self):
        return sorted(self._metrics)

    def meta(self, epoch):
        return {"metrics": self._metrics[epoch]}


def _record(epoch):
    return {"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0 / epoch}


def test_reconcile_history_known_answers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    ckpt = _FakeCheckpoints({3: {k: float(v) for k, v in _record(3).items()}})
    # Epoch 2's line is missing with no checkpoint left (an old gap), epoch 3's is
    # missing with its checkpoint, epoch 4's line outlived its checkpoint, and the
    # last line is torn.
    path.write_text(
        json.dumps(_record(1)) + "\n" + json.dumps(_record(4)) + "\n" + '{"epoch": 5, "st'
    )
    history, recreated = loop_lib._reconcile_history(path, ckpt, 3, write=True)
    assert history == [_record(1), _record(3)]
    assert recreated == [_record(3)]
    assert path.read_text() == json.dumps(_record(1)) + "\n" + json.dumps(_record(3)) + "\n"

    # A file that already matches is not rewritten.
    inode = path.stat().st_ino
    assert loop_lib._reconcile_history(path, ckpt, 3, write=True) == ([_record(1), _record(3)], [])
    assert path.stat().st_ino == inode

    # Without `write` (processes other than 0) nothing is written.
    path.write_text(json.dumps(_record(1)) + "\n")
    history, _ = loop_lib._reconcile_history(path, ckpt, 3, write=False)
    assert history == [_record(1), _record(3)]
    assert path.read_text() == json.dumps(_record(1)) + "\n"

    # A fresh start (no checkpoint) empties a stale file; no file is not created.
    loop_lib._reconcile_history(path, _FakeCheckpoints({}), 0, write=True)
    assert path.read_text() == ""
    missing = tmp_path / "none.jsonl"
    assert loop_lib._reconcile_history(missing, _FakeCheckpoints({}), 0, write=True) == ([], [])
    assert not missing.exists()


def test_reconcile_history_refuses_a_broken_line_that_is_not_the_last(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("{broken\n" + json.dumps(_record(1)) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:1 is not valid JSON"):
        loop_lib._reconcile_history(path, _FakeCheckpoints({}), 1, write=True)
    # A broken last line that ends in a newline was written whole: not a torn append.
    path.write_text(json.dumps(_record(1)) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not valid JSON"):
        loop_lib._reconcile_history(path, _FakeCheckpoints({}), 1, write=True)


def test_ctrl_c_before_the_first_and_after_the_last_checkpoint_says_what_a_rerun_does():
    """Epochs count from 1, as in the progress bar: with no checkpoint yet there is no
    "epoch 0" to resume from."""
    closed = []
    closer = mock.Mock(close=lambda: closed.append(1))
    interrupt = loop_lib._Interrupt()
    try:
        interrupt.requested = True
        with pytest.raises(KeyboardInterrupt) as raised:
            interrupt.check(0, mock.Mock(step=np.int32(225)), closer, closer, 3)
        # After the last epoch's checkpoint, before the summary: no epoch 4 to resume.
        with pytest.raises(KeyboardInterrupt) as after_the_last:
            interrupt.check(3, mock.Mock(step=np.int32(675)), closer, closer, 3)
    finally:
        interrupt.restore()
    assert str(raised.value) == (
        "interrupted in epoch 1 at optimizer step 225, before the first checkpoint: run the "
        "same command to start again from epoch 1"
    )
    assert str(after_the_last.value) == (
        "interrupted after the last epoch (3), before the test evaluation and the run's "
        "summary: run the same command to finish them (nothing is trained again)"
    )
    assert closed == [1, 1, 1, 1]  # the event log and the checkpoints, each time


def test_ctrl_c_stops_at_a_dispatch_boundary_and_the_rerun_resumes(
    tmp_path, synthetic_config, synthetic_run, caplog
):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    # The uninterrupted synthetic_run's config, in dispatches of 4 steps (it ran whole
    # epochs per dispatch): the interruption falls inside epoch 2.
    chunk = 4
    config = synthetic_config(num_epochs=2, steps_per_dispatch=chunk)
    steps_per_epoch = lines_of(synthetic_run)[0]["step"]
    assert steps_per_epoch % chunk == 0 and steps_per_epoch > 2 * chunk
    real_make = trainer_lib._make_chunk_runner

    def make_runner(*args, **kwargs):
        runner = real_make(*args, **kwargs)

        class PressCtrlC:  # after the 3rd dispatch of epoch 2
            calls = 0
            traces = property(lambda self: runner.traces)

            def __call__(self, *a):
                out = runner(*a)
                PressCtrlC.calls += 1
                if PressCtrlC.calls == steps_per_epoch // chunk + 3:
                    os.kill(os.getpid(), signal.SIGINT)
                return out

        return PressCtrlC()

    before = signal.getsignal(signal.SIGINT)
    workdir = tmp_path / "run"
    message = (
        f"interrupted in epoch 2 at optimizer step {steps_per_epoch + 3 * chunk}; epoch 1 is the "
        "last checkpoint: run the same command to resume with epoch 2 from its start"
    )
    with mock.patch.object(trainer_lib, "_make_chunk_runner", make_runner):
        with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt) as raised:
            train.train_and_evaluate(config, workdir)
    assert str(raised.value) == message
    assert message in caplog.text
    assert signal.getsignal(signal.SIGINT) is before
    assert train.Checkpoints(workdir / "checkpoints", read_only=True).epochs() == [1]
    assert [r["epoch"] for r in lines_of(workdir)] == [1]
    assert not (workdir / "train_summary.json").exists()

    train.train_and_evaluate(config, workdir)
    a = train.restore_model(synthetic_run, checkpoint="latest")[1]
    b = train.restore_model(workdir, checkpoint="latest")[1]
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    assert without_timing(lines_of(workdir)) == without_timing(lines_of(synthetic_run))
