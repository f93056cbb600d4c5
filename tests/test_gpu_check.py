"""`make gpu-check` cannot rot between GPU runs: its plan parses, and its rehearsal runs.

GPU time is rare; a renamed config field or a broken step found on the GPU machine
costs the whole run. The first test parses every command of both plans (the GPU one
and the :smoke rehearsal) against its locked config, as the scripts would; the second
runs steps of the rehearsal on this CPU and reads what they recorded.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402

# ml_collections loads config files with importlib's deprecated load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def _parse_config_flags(argv):
    """The config that `argv`'s --config and --config.* flags give the script."""
    args = ["script", *(a for a in argv if a.startswith("--config"))]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=args
    )
    values(args)
    return values.config


@pytest.mark.parametrize("smoke", [False, True], ids=["gpu", "smoke"])
def test_every_planned_command_parses(smoke, tmp_path):
    plan = gpu_check.steps(smoke, tmp_path / "runs", tmp_path / "out")
    assert [s.name for s in plan] == [
        "install",
        "pytest",
        "benchmark",
        "goals",
        "studies",
        "grids",
    ]
    studies = 0
    for step in plan:
        for _, argv in step.commands:
            script = Path(argv[1])
            if script.parent.name != "experiments":
                continue
            assert script.is_file(), script
            config = _parse_config_flags(argv)
            studies += 1
            if step.name == "benchmark":
                assert tuple(config.methods) == gpu_check.BENCHMARK_METHODS
                assert tuple(config.batch_sizes) == ((4,) if smoke else (256,))
            if step.name == "goals" and not smoke and "resnet" in argv[2]:
                assert dict(config.grid.model) == {"num_blocks": (3,), "filters": (64,)}
                assert config.final.num_epochs == 40 and config.trial.model.dtype == "auto"
    assert studies == 7


def test_unknown_step_no_gpu_and_no_data_are_one_line_errors(capsys, tmp_path):
    assert gpu_check.main(["--steps", "nosuch"]) == 2
    assert "unknown step(s) ['nosuch']" in capsys.readouterr().err
    out = tmp_path / "out"
    assert gpu_check.main(["--smoke", f"--data_dir={tmp_path}", f"--out={out}"]) == 2
    assert "holds no fashion_mnist/*-ubyte.gz; `make gpu-data`" in capsys.readouterr().err
    assert not out.exists()
    runs = tmp_path / "runs"
    args = [f"--wheels={tmp_path / 'nowhere'}", f"--out={out}", f"--runs={runs}"]
    assert gpu_check.main(["--smoke", *args]) == 2
    assert f"--wheels={tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err
    assert not out.exists() and not runs.exists()
    if gpu_check.gpu_name() is None:
        assert gpu_check.main([]) == 2
        assert "GPU_CHECK_SMOKE=1" in capsys.readouterr().err


def test_a_check_split_over_commands_keeps_every_record(tmp_path, capsys):
    """--steps in a later command adds to gpu_check.json rather than replacing what an
    earlier command on the same machine measured."""
    args = ["--smoke", f"--runs={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}", "--steps"]
    assert gpu_check.main([*args, "install"]) == 0
    capsys.readouterr()
    assert gpu_check.main([*args, "install"]) == 0
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [e["command"] for e in record["commands"]] == ["install", "install"]
    logs = [e["log"] for e in record["commands"]]
    assert logs[0] != logs[1] and all(Path(log).is_file() for log in logs)
    assert all(e["status"] == "ok" for e in record["commands"])
    assert "gpu-check: 1 commands, 0 not ok" in capsys.readouterr().out
    # A record that is not one (a truncated write) is kept aside, not lost or fatal.
    (tmp_path / "out" / "gpu_check.json").write_text('{"commands": [')
    assert gpu_check.main([*args, "install"]) == 0
    assert (tmp_path / "out" / "gpu_check.1.json").read_text() == '{"commands": ['
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [e["command"] for e in record["commands"]] == ["install"]


@pytest.mark.slow
def test_rehearsal_records_every_command_and_copies_the_tables(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gpu_check.py"),
            "--smoke",
            f"--runs={runs}",
            f"--out={out}",
            "--steps",
            "install",
            "benchmark",
            "studies",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())
    status = {entry["command"]: entry["status"] for entry in record["commands"]}
    assert status["install"] == "ok" and status["sae"] == "ok" and status["cnn_fmnist"] == "ok"
    benchmark = next(e for e in record["commands"] if e["command"] == "benchmark")
    if benchmark["status"] == "skipped":
        assert benchmark["reason"] == "torch is not installed"
    summary = json.loads((out / "cnn_fmnist" / "train_summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert any((out / "sae").iterdir())
    assert "[gpu-check 3/3 studies] cnn_fmnist: ok" in proc.stdout


def test_the_gpu_tests_give_every_method_what_it_needs():
    """tests/test_gpu.py runs only on an accelerator: here, on the CPU, every method it
    compares gets an explainer from its options (a missing neuron= or reference batch
    would fail only on the GPU machine, whose time is scarce)."""
    import jax

    from fmi_jax import attribution, models
    from tests import test_gpu

    model = models.get_model("cnn_mnist", features=(8, 16), dense=(32,))
    variables = jax.eval_shape(model.init, jax.random.key(0), jax.numpy.zeros((1, 28, 28, 1)))
    assert len(test_gpu.METHODS) >= 35
    for name in test_gpu.METHODS:
        attribution.explainer(
            name,
            lambda x: model.apply(variables, x),
            model=model,
            variables=variables,
            **test_gpu._options(name),
        )


def _pure_wheel(folder, dist, module):
    """A minimal py3-none-any wheel of `dist` holding an empty `module`."""
    import zipfile

    info = f"{dist.replace('-', '_')}-0.1.dist-info"
    files = {
        f"{module}/__init__.py": "",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    path = folder / f"{dist.replace('-', '_')}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_offline_install_into_a_read_only_environment_goes_to_the_site_folder(
    tmp_path, monkeypatch
):
    """A GPU image's site-packages may be read-only: what is missing is installed from
    the carried wheels, without an index, into the folder the steps put on PYTHONPATH;
    and what imports is never installed."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _pure_wheel(wheels, "fmi-offline-probe", "fmi_offline_probe")
    monkeypatch.setattr(
        gpu_check, "NEEDED", {"fmi_offline_probe": "fmi-offline-probe", "json": "x"}
    )
    purelib = gpu_check.sysconfig.get_paths()["purelib"]
    real_access = gpu_check.os.access
    monkeypatch.setattr(
        gpu_check.os, "access", lambda p, mode: p != purelib and real_access(p, mode)
    )
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no index, no find-links but ours
    site = tmp_path / "site"
    result = gpu_check.install(wheels, site=site)
    assert result == {"missing": ["fmi-offline-probe"], "installed": {"fmi-offline-probe": "0.1"}}
    assert (site / "fmi_offline_probe" / "__init__.py").is_file()
    assert not (Path(purelib) / "fmi_offline_probe").exists()


def test_needed_covers_every_package_the_steps_import():
    """A package that fmi_jax, the experiments or the configs import but NEEDED omits
    would be missing on a GPU image only, and fail the steps there."""
    import ast

    optional = {
        "tensorflow_datasets": "only to download, and the GPU run reads --data_dir",
        "pillow_heif": "only for HEIF photos",
        "torch": "the machine's own",
        "torchvision": "the machine's own",
    }
    imported = set()
    for folder in ("fmi_jax", "experiments", "configs"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"fmi_jax", "experiments", "configs"}
    needed = {module.split(".")[0] for module in gpu_check.NEEDED}
    assert third_party - needed - set(optional) == set()
    assert {"captum", "tensorboardX", "ml_collections"} <= needed
    assert set(gpu_check.PURE_PYTHON) <= set(gpu_check.NEEDED.values())
