"""The experiment scripts start from any working directory.

Their `--config` defaults and the benchmark's training-row config are found in the
repository's configs/, not in the current directory.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import configs
from fmi_jax import benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_config_paths_are_absolute_and_name_their_variant():
    path = configs.path("explain")
    assert Path(path).is_absolute() and Path(path) == ROOT / "configs" / "explain.py"
    assert configs.path("cnn_fmnist:smoke") == f"{ROOT / 'configs' / 'cnn_fmnist.py'}:smoke"
    with pytest.raises(ValueError, match=r"unknown config 'nosuch'.*choose one of \[.*'explain'"):
        configs.path("nosuch")


def test_load_takes_the_variant_after_a_colon():
    assert configs.load("cnn_fmnist:smoke") == configs.load("cnn_fmnist", "smoke")
    assert configs.load("cnn_fmnist:") == configs.load("cnn_fmnist")
    with pytest.raises(ValueError, match="names a variant"):
        configs.load("cnn_fmnist:smoke", "smoke")


def test_benchmark_asks_for_the_training_config_instead_of_importing_configs(tmp_path):
    config = configs.load("benchmark", "smoke")
    assert config.train.config == "cnn_fmnist:smoke"
    with pytest.raises(ValueError, match=r"pass its loaded config as train_config="):
        benchmark.run_benchmark(config, tmp_path)
    assert not any(tmp_path.iterdir())


def _run_elsewhere(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python <script> args` started in `cwd`, with nothing on PYTHONPATH and the
    default (one-line) error reporting."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FMI_JAX_VERBOSE")}
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_explain_script_runs_from_another_folder_with_its_default_config(tmp_path, synthetic_run):
    """`python <repo>/experiments/explain.py` started in an empty folder, with nothing
    on PYTHONPATH: the script finds the repository and its default configs/explain.py."""
    proc = _run_elsewhere(
        ROOT / "experiments" / "explain.py",
        f"--workdir={synthetic_run}",
        "--config.output=explain_from_elsewhere",
        "--config.methods=('saliency',)",
        "--config.layer_cam.samples=0",
        "--config.selection.per_class=1",
        "--config.selection.threshold=0.0",
        "--config.figures.max_sheets=1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    stats = json.loads((synthetic_run / "explain_from_elsewhere" / "stats.json").read_text())
    assert list(stats["methods"]) == ["saliency"]
    # The study ran the repository's default config: its IG options are recorded.
    recorded = json.loads((synthetic_run / "explain_from_elsewhere" / "config.json").read_text())
    assert recorded["options"]["integrated_gradients"]["steps"] == 50
    assert not any(tmp_path.iterdir())  # nothing written where it was started


@pytest.mark.parametrize(
    "script",
    [
        "adversarial_agreement.py",
        "adversarial_robustness.py",
        "cam_agreement.py",
        "composition_agreement.py",
        "pic_agreement.py",
        "quantus_agreement.py",
        "tcav_agreement.py",
        "tracin_agreement.py",
        "influence_agreement.py",
    ],
)
def test_comparison_scripts_end_in_one_error_line_without_their_inputs(tmp_path, script):
    """Started from another folder, without a trained run (or, where the reference
    package is missing, as in CI, without it): one `error:` line and exit status 2."""
    proc = _run_elsewhere(
        ROOT / "scripts" / script, f"--workdir={tmp_path / 'no_run'}", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert not (tmp_path / "no_run").exists()


def test_pool_ties_routes_near_ties_to_the_runner_up_and_nothing_else():
    """scripts/pool_ties.py's alternative rule: a window whose two largest values are
    within eps (relative) sends its gradient to the second; any other window to its
    maximum, as max_pool does; the values are max_pool's."""
    import importlib.util

    import jax
    import jax.numpy as jnp

    from fmi_jax.models import layers

    spec = importlib.util.spec_from_file_location("pool_ties", ROOT / "scripts" / "pool_ties.py")
    pool_ties = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pool_ties)
    near = jnp.array([[1.0, 2.0], [2.0 - 1e-6, 0.0]])  # runner-up at row 1, column 0
    apart = jnp.array([[0.0, 1.0], [3.0, 2.0]])
    x = jnp.concatenate([near, apart], axis=1)[None, :, :, None]
    grad = lambda pool: jax.grad(lambda z: pool(z, 2).sum())(x)[0, :, :, 0]
    assert grad(pool_ties.near_tie_pool(1e-5)).tolist() == [[0, 0, 0, 0], [1, 0, 1, 0]]
    assert grad(pool_ties.near_tie_pool(1e-7)).tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
    assert grad(layers.max_pool).tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
    assert pool_ties.near_tie_pool(1e-5)(x, 2).tolist() == layers.max_pool(x, 2).tolist()
