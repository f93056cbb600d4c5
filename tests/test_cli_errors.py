"""Scripts fail cleanly: an expected error (bad input) is one line on stderr and exit
status 2; --verbose shows its traceback; a bug keeps its traceback and status 1.

The subprocess runs fail before any training (flag parsing or the config check at the
top of train_and_evaluate), so each costs only the imports (a few seconds). What
counts as "one line": stderr is exactly the `error: ...` line and the fixed
`(run with --verbose for the traceback)` hint; nothing is logged before the error.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import _cli
from fmi_jax import models
from fmi_jax.train import trainer, validation

ROOT = Path(__file__).resolve().parents[1]
HINT = "(run with --verbose for the traceback)"


def _train(tmp_path, *overrides, as_file=False, verbose_env=False, config=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FMI_JAX_VERBOSE")}
    if verbose_env:
        env["FMI_JAX_VERBOSE"] = "1"
    start = [str(ROOT / "experiments" / "train.py")] if as_file else ["-m", "experiments.train"]
    return subprocess.run(
        [
            sys.executable,
            *start,
            f"--config={config or ROOT / 'configs' / 'cnn_fmnist.py'}:smoke",
            f"--workdir={tmp_path / 'run'}",
            *overrides,
        ],
        cwd=tmp_path if as_file else ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(proc, after_logs: bool = False) -> str:
    """The error line of a refused command: all of stderr but the hint, or, with
    ``after_logs`` (an error found after the data loaded), after absl's log lines."""
    assert proc.returncode == 2, proc.stderr[-4000:]
    lines = proc.stderr.splitlines()
    if after_logs:
        lines = [line for line in lines if not re.match(r"[IWE]\d{4} ", line)]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1] == HINT, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "override, as_file, expected",
    [
        # Refused by validate_train_config before the workdir is made.
        ("--config.batch_size=-32", False, r"config\.batch_size must be an integer >= 1, got -32"),
        # Raised by ml_collections inside absl's flag parsing, before main runs.
        ("--config.nonexistent=1", True, r"--config\.nonexistent=1: config has no field 'nonexistent'"),
        ("--config.model.name=nosuch", False, r"config\.model\.name: unknown model 'nosuch'; choose one of .*cnn_fmnist"),
    ],
)  # fmt: skip
def test_expected_errors_are_one_line_and_exit_2(tmp_path, override, as_file, expected):
    line = _one_error_line(_train(tmp_path, override, as_file=as_file))
    assert re.search(expected, line), line
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.nosuch=1", "error: --config.nosuch=1: config has no field 'nosuch'"),
        (
            "--config.classifer.C=1",
            "error: --config.classifer.C=1: config has no field 'classifer' "
            "(did you mean 'classifier'?)",
        ),
    ],
)
def test_an_override_of_a_default_config_is_one_line_and_exit_2(tmp_path, override, expected):
    # Without --config, ml_collections loads the default file and applies the overrides
    # while the flag is defined, when the script's module is imported.
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.tcav", f"--workdir={tmp_path / 'run'}", override],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert _one_error_line(proc) == expected
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.loop=nosuch", r"config\.loop must be 'auto', 'step' or 'scan', got 'nosuch'"),
        ("--config.data.train_limit=5", r"batch_size 32 is larger than the 5 training examples"),
        ("--config.model.name=resnet", r"model 'resnet' does not take batch_norm, dense, features"),
    ],
)
def test_what_the_trainer_refuses_leaves_no_workdir(tmp_path, override, expected):
    # Found after the data loaded (its log lines come first), before the workdir is made.
    line = _one_error_line(_train(tmp_path, override), after_logs=True)
    assert re.search(expected, line), line
    assert not (tmp_path / "run").exists()


def test_a_coordinator_that_never_answers_is_one_line_and_exit_2(tmp_path):
    # Without the wait, jax's client aborts the interpreter with a C++ stack trace.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    flags = ["--distributed", f"--coordinator_address={address}", "--num_processes=2"]
    line = _one_error_line(_train(tmp_path, *flags, "--process_id=1", "--initialization_timeout=1"))
    assert line.startswith(f"error: no coordinator answers at {address} after 1 s ("), line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides", [(), ("--config.num_epochs=2",)], ids=["alone", "override"])
def test_a_config_file_that_does_not_load_is_one_line_and_exit_2(tmp_path, overrides):
    # An override makes ml_collections meet the load error while it parses the flags.
    missing = tmp_path / "nope.py"
    line = _one_error_line(_train(tmp_path, *overrides, config=missing))
    assert line == (
        "error: --config: cannot load the config file: "
        f"[Errno 2] No such file or directory: '{missing}'"
    )
    assert not (tmp_path / "run").exists()


def test_verbose_shows_the_traceback(tmp_path):
    proc = _train(tmp_path, "--config.batch_size=-32", "--verbose")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("ConfigValueError: config.batch_size must be an integer >= 1, got -32")
    )
    assert HINT not in proc.stderr


# --------------------------------------------------------------------------- in-process
@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.delenv("FMI_JAX_VERBOSE", raising=False)


def _main_raising(error):
    def main():
        raise error

    return _cli.guard(main)


def test_a_bug_keeps_its_traceback():
    with pytest.raises(RuntimeError, match="a bug"):
        _main_raising(RuntimeError("a bug"))(["prog"])
    # numpy's errstate or jax_debug_nans raise FloatingPointError for bugs too.
    with pytest.raises(FloatingPointError, match="invalid value"):
        _main_raising(FloatingPointError("invalid value (nan) encountered in log"))(["prog"])


@pytest.mark.parametrize(
    "error, line",
    [
        (ValueError("bad value"), "error: bad value"),
        (FileNotFoundError("no run in /w"), "error: no run in /w"),
        (PermissionError(13, "Permission denied", "/data/x"), "error: permission denied: /data/x"),
        (FileExistsError(17, "File exists", "/w/out"), "error: file exists: /w/out"),
        # A --workdir that is a file, met when the run writes into it.
        (
            NotADirectoryError(20, "Not a directory", "/w/afile/config.json"),
            "error: not a directory: /w/afile/config.json",
        ),
        # A training loss that became NaN (train.NonFiniteLossError says what to change).
        (
            trainer.NonFiniteLossError("training loss is nan at optimizer step 1"),
            "error: training loss is nan at optimizer step 1",
        ),
        # An optional extra that is not installed (torch for .pth weights).
        (
            ModuleNotFoundError("reading 'w.pth' needs torch: pip install torch"),
            "error: reading 'w.pth' needs torch: pip install torch",
        ),
    ],
)
def test_an_expected_error_is_one_line_and_exit_2(capsys, error, line):
    with pytest.raises(SystemExit) as exit_info:
        _main_raising(error)(["prog"])
    assert exit_info.value.code == _cli.EXIT_EXPECTED == 2
    assert capsys.readouterr().err == f"{line}\n{HINT}\n"


def test_verbose_environment_re_raises(monkeypatch):
    monkeypatch.setenv("FMI_JAX_VERBOSE", "1")
    with pytest.raises(ValueError, match="bad value"):
        _main_raising(ValueError("bad value"))(["prog"])


def test_leftover_arguments_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli.guard(lambda: None)(["prog", "stray"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: unexpected arguments: stray\n")


def test_unknown_override_names_the_field_and_a_suggestion():
    argv = ["prog", "--workdir=w", "--config.model.nosuch=1"]
    assert (
        _cli._unknown_field(AttributeError(KeyError("'nosuch'")), argv)
        == "--config.model.nosuch=1: config.model has no field 'nosuch'"
    )
    error = KeyError('\'batch_sise\'\nDid you mean "batch_size" instead of "batch_sise"?')
    assert _cli._unknown_field(error, ["prog", "--config.batch_sise=3"]) == (
        "--config.batch_sise=3: config has no field 'batch_sise' (did you mean 'batch_size'?)"
    )
    assert _cli._unknown_field(AttributeError("'x'"), ["prog", "--workdir=w"]) is None


def test_verbose_is_read_from_the_command_line_while_parsing():
    assert _cli._verbose(["prog", "--verbose"])
    assert not _cli._verbose(["prog", "--verbose", "--noverbose"])
    assert _cli._verbose(["prog", "--verbose=true"])
    assert not _cli._verbose(["prog"])


# --------------------------------------------------------------------------- validation
@pytest.fixture
def config(synthetic_config):
    return synthetic_config()


def test_the_shipped_training_configs_are_valid():
    import configs

    for name in ("cnn_fmnist", "cnn_mnist", "cifarnet_cifar10"):
        for variant in ("", "smoke"):
            validation.validate_train_config(configs.load(name, variant))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", -32, r"^config\.batch_size must be an integer >= 1, got -32$"),
        ("batch_size", 0, r"config\.batch_size must be an integer >= 1, got 0"),
        ("eval_batch_size", 0, r"config\.eval_batch_size must be an integer >= 1, got 0"),
        ("num_epochs", 0, r"config\.num_epochs must be an integer >= 1, got 0"),
        ("learning_rate", 0.0, r"config\.learning_rate must be a finite number > 0, got 0\.0"),
        ("learning_rate", -1e-3, r"config\.learning_rate must be a finite number > 0"),
        ("model.name", "nosuch", r"config\.model\.name: unknown model 'nosuch'; choose one of .*cnn_fmnist"),
        ("data.name", "nosuch", r"config\.data\.name: unknown dataset 'nosuch'; choose one of .*fashion_mnist"),
        ("model.dropout", 1.5, r"config\.model\.dropout must be a number in \[0, 1\), got 1\.5"),
        ("label_smoothing", 1.0, r"config\.label_smoothing must be a number in \[0, 1\)"),
        ("augment.erasing", 2.0, r"config\.augment\.erasing must be a number in \[0, 1\]"),
        ("warmup_epochs", -1.0, r"config\.warmup_epochs must be a finite number >= 0, got -1\.0"),
        ("weight_decay", -1e-4, r"config\.weight_decay must be a finite number >= 0"),
        ("grad_clip_norm", -1.0, r"config\.grad_clip_norm must be a finite number >= 0"),
        ("learning_rate", float("inf"), r"config\.learning_rate must be a finite number > 0, got inf"),
        ("weight_decay", float("nan"), r"config\.weight_decay must be a finite number >= 0, got nan"),
        ("warmup_epochs", float("inf"), r"config\.warmup_epochs must be a finite number >= 0, got inf"),
        ("grad_clip_norm", float("nan"), r"config\.grad_clip_norm must be a finite number >= 0, got nan"),
        ("steps_per_dispatch", 0, r"config\.steps_per_dispatch must be an integer >= 1"),
        ("momentum", -1.0, r"config\.momentum must be a number in \[0, 1\), got -1\.0"),
        ("checkpoint_keep", 0, r"config\.checkpoint_keep must be an integer >= 1, got 0"),
        ("augment.crop_padding", -3, r"config\.augment\.crop_padding must be an integer >= 0"),
        ("data.split_seed", -1, r"config\.data\.split_seed must be an integer >= 0, got -1"),
        ("optimizer", "SGD", r"config\.optimizer: unknown optimizer 'SGD'; choose one of adamw, adam, sgd"),
        ("schedule", "cosin", r"config\.schedule: unknown schedule 'cosin'; choose one of constant, cosine"),
        ("augment.crop", 2, r"config\.augment has no field 'crop'; its fields are flip, crop_padding, erasing"),
        ("model.features", (8, 0), r"config\.model\.features must be a list of integers >= 1, got \(8, 0\)"),
        ("model.dense", (-32,), r"config\.model\.dense must be a list of integers >= 1, got \(-32,\)"),
        ("model.kernel_size", 0, r"config\.model\.kernel_size must be an integer >= 1, got 0"),
    ],
)  # fmt: skip
def test_each_rule_names_the_field_and_what_it_allows(synthetic_config, field, value, message):
    config = synthetic_config(**{field: value})
    with pytest.raises(ValueError, match=message) as info:
        validation.validate_train_config(config)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"name": "cnn_tunable", "dense_width": -4}, r"config\.model\.dense_width must be an integer >= 1, got -4"),
        ({"name": "cnn_tunable", "conv2_filters": 0}, r"config\.model\.conv2_filters must be an integer >= 1, got 0"),
        ({"name": "resnet", "filters": -8}, r"config\.model\.filters must be an integer >= 1, got -8"),
        ({"name": "resnet", "num_blocks": 0}, r"config\.model\.num_blocks must be an integer >= 1, got 0"),
        ({"name": "sae_classifier", "hidden": [512, 0]}, r"config\.model\.hidden must be a list of integers >= 1"),
        ({"name": "k_sparse_autoencoder", "latents": 0}, r"config\.model\.latents must be an integer >= 1, got 0"),
        ({"name": "cnn_fmnist", "num_classes": 0}, r"config\.model\.num_classes must be an integer >= 1, got 0"),
    ],
)  # fmt: skip
def test_a_layer_size_below_one_is_refused(model, message):
    # Such a model has no layer to build: flax fails in its init, after the data loaded.
    with pytest.raises(ValueError, match=message):
        validation.validate_train_config({"model": model})
    sizes = {k: (8, 4) if k == "hidden" else 8 for k in model if k != "name"}
    validation.validate_train_config({"model": {"name": model["name"], **sizes}})


def test_the_config_check_refuses_every_size_get_model_refuses():
    # One list of rules: what get_model would refuse after the data loaded is refused first.
    for field in (*models.SIZE_ARGUMENTS, *models.WIDTH_ARGUMENTS):
        bad = (0,) if field in models.WIDTH_ARGUMENTS else 0
        assert models.argument_problem(field, bad) is not None
        with pytest.raises(ValueError, match=rf"^config\.model\.{field} must be"):
            validation.validate_train_config({"model": {"name": "cnn_fmnist", field: bad}})


def test_adam_with_weight_decay_is_refused_as_it_would_ignore_it(synthetic_config):
    config = synthetic_config(optimizer="adam", weight_decay=5e-4)
    with pytest.raises(ValueError, match=r"optimizer 'adam' has no weight decay.*'adamw'"):
        validation.validate_train_config(config)
    validation.validate_train_config(synthetic_config(optimizer="adam", weight_decay=0.0))
    validation.validate_train_config(synthetic_config(optimizer="adamw", weight_decay=5e-4))


def test_only_fields_that_exist_are_checked():
    validation.validate_train_config({"batch_size": 8, "model": {"features": (8,)}})
    with pytest.raises(ValueError, match="num_epochs"):
        validation.validate_train_config({"num_epochs": 0})


def test_train_and_evaluate_refuses_before_writing(synthetic_config, tmp_path):
    from fmi_jax import train

    with pytest.raises(ValueError, match="batch_size"):
        train.train_and_evaluate(synthetic_config(batch_size=0), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_ctrl_c_ends_in_its_one_line_and_status_130(capsys):
    message = (
        "interrupted in epoch 2 at optimizer step 7; epoch 1 is the last checkpoint: run the "
        "same command to resume with epoch 2 from its start"
    )
    with pytest.raises(SystemExit) as exit_info:
        _main_raising(KeyboardInterrupt(message))(["prog"])
    assert exit_info.value.code == _cli.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == f"interrupted: {message}\n"
