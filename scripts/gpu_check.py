r"""Everything a GPU machine should measure, in one command that fits its time.

    make gpu-check                      # on the GPU machine (python scripts/gpu_check.py)
    make gpu-check GPU_CHECK_SMOKE=1    # the rehearsal: every step with :smoke configs

Steps, in order; each is a subprocess with its own time budget, and each writes what
it measured as it finishes (a run cut off by the machine's time limit keeps every
step before the cut):

  install    imports what the steps need; installs only what is missing, at the
             versions of constraints.txt, never touching what is installed (the
             machine's CUDA jax stays). Offline, wheels come from --wheels (`make
             gpu-data` saves the pure-Python ones into .gpu_data/wheels, the
             default with --data_dir=.gpu_data).
  pytest     `pytest -m gpu`: every attribution method (but the at_layer and at_neuron
             compositions of them) on the accelerator against the CPU on the same
             weights (tests/test_gpu.py), and one training run
             with the 'step' and the 'scan' loop giving the same parameters.
  benchmark  experiments/benchmark.py at batch 256 against PyTorch on CUDA: saliency,
             IG, SmoothGrad, IG + SmoothGrad, DeepLIFT, Grad-CAM, Score-CAM,
             occlusion and the training epoch; device-memory peaks per method.
  goals      the two configurations that decide the accuracy goals, at full length:
             the 3-block, 64-filter ResNet (15-epoch trial, 40-epoch retrain) and the
             CNN grid's best point of the CPU screening (conv 32/64, 5 x 5, dense 64;
             10-epoch trial, 30-epoch retrain; the original project's winning point
             is not recorded).
  studies    the sparse-autoencoder study and `make train`'s CNN, for GPU wall times.
  grids      the full ResNet and CNN grids, with whatever time is left (a tuning
             study resumes: a later run on the same machine finishes them).

Results: <out>/gpu_check.json (one record per command: status, seconds, log), the
benchmark's benchmark.{json,md}, and each study's tables (results.md, metrics.json,
train_summary.json, ...) copied from its workdir under runs/gpu_check/.

Time on an H200, measured (2026-12-04; docs/gpu.md has the run). The machine's start
and the transfers took about 35 s; then install 50 s (five wheels), pytest 104 s (64 s
of it the CPU side of every method, compiled once), benchmark 194 s for the speed rows
(99 s of it between the logits check and the first row: the agreement check of every
method on both sides, and the matmul peak) plus 16 memory probes of a fresh process
each (not reached; estimated 5-8 s each), goals 140 s (the ResNet at 0.48 s a bfloat16
epoch, 24 s for its 40-epoch retrain; the CNN 9 s for its 30), studies 113 s (the
sparse autoencoder 84 s, the CNN 29 s). The grids, from those trials: 24 CNN trials of
~18 s and 6 ResNet trials of ~25-60 s with their retrains, ~12 minutes (a tuning study
resumes: a second command finishes them). Before the run they were estimated from FLOP
counts at 10% of the H200's peak (the default CNN ~50 MFLOP per image with its
backward pass, 2.7 TFLOP an epoch; the 3 x 64 ResNet ~57 TFLOP): ~0.5 s a CNN epoch
and ~2 s a ResNet one, where the measured epochs took 0.25 s and 0.48 s. Each step's
budget below is its measurement with a margin, a cap rather than a plan: the default
--budget_s, 560 s, fits one 10-minute command with the start-up and reaches the goals
only if the benchmark ends early. The whole takes about 25 minutes, more than one
command, so split it with --steps where the lease allows several commands (each
repeats `install`, which returns at once when nothing is missing):

    python3 scripts/gpu_check.py --data_dir=.gpu_data --steps install pytest benchmark
    python3 scripts/gpu_check.py --data_dir=.gpu_data --steps install goals studies
    python3 scripts/gpu_check.py --data_dir=.gpu_data --steps install grids
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# module -> distribution, for what the steps import (torch comes with the machine).
# tensorflow-datasets is left out: with --data_dir the original files are read
# directly, and fmi_jax imports tfds only to download.
NEEDED = {
    "jax": "jax",
    "numpy": "numpy",
    "flax": "flax",
    "optax": "optax",
    "orbax.checkpoint": "orbax-checkpoint",
    "ml_collections": "ml_collections",
    "absl": "absl-py",
    "tensorboardX": "tensorboardX",  # every training run writes its events
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "PIL": "pillow",
    "pytest": "pytest",
    "captum": "captum",
    # Score-CAM's reference and what `import pytorch_grad_cam` needs besides torch.
    "pytorch_grad_cam": "grad-cam",
    "ttach": "ttach",
    "cv2": "opencv-python-headless",
    "sklearn": "scikit-learn",
}
# Installed without its dependencies, as `make bench` does: they name an unpinned
# torchvision, which would replace the machine's torch.
NO_DEPS = {"grad-cam"}
# How the steps import a module where it is not a plain import: the benchmark imports
# grad-cam without torchvision if need be.
IMPORTED_AS = {
    "pytorch_grad_cam": "from fmi_jax.benchmark import torch_side; "
    "torch_side.import_grad_cam('score_cam')",
}
# The pure-Python distributions of NEEDED, whose wheels fit any Python and platform:
# `--save_wheels` (run by `make gpu-data`) keeps them, at constraints.txt's versions,
# for a machine without internet. An image with CUDA jax and PyTorch has the binary
# rest (numpy, scipy, matplotlib, pillow, opencv, scikit-learn) and what these need
# (torch, PyYAML, protobuf), but seldom these. (pytest would need four more.)
PURE_PYTHON = (
    "absl-py",
    "captum",
    "grad-cam",
    "ml_collections",
    "tensorboardX",
    "tqdm",
    "ttach",
)
BENCHMARK_METHODS = (
    "saliency",
    "integrated_gradients",
    "smoothgrad",
    "ig_smoothgrad",
    "deeplift",
    "grad_cam",
    "score_cam",
    "occlusion",
)


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    budget_s: float
    commands: tuple[tuple[str, tuple[str, ...]], ...]  # (label, argv): run in order
    results: tuple[str, ...] = ()  # workdirs whose tables are copied to the results


def _script(name: str, *args: str) -> tuple[str, ...]:
    return (PY, str(ROOT / "experiments" / f"{name}.py"), *args)


#: How many times its GPU budgets the CPU rehearsal (--smoke) may take.
SMOKE_BUDGET_SCALE = 5


def steps(smoke: bool, runs: Path, out: Path) -> list[Step]:
    """The plan; `smoke` swaps every config for its :smoke variant on synthetic data."""
    v = ":smoke" if smoke else ""
    cfg = lambda name: str(ROOT / "configs" / f"{name}.py") + v
    # The rehearsal trains on generated images: it checks the plumbing, not accuracy.
    data = lambda prefix: (f"--config.{prefix}data.name=synthetic",) if smoke else ()
    if smoke:
        resnet_point = ("--config.grid.model.num_blocks=(1,)", "--config.grid.model.filters=(4,)")
        cnn_point = ("--config.grid.model.dense_width=(16,)",)
    else:
        resnet_point = ("--config.grid.model.num_blocks=(3,)", "--config.grid.model.filters=(64,)")
        cnn_point = (
            "--config.grid.model.conv1_filters=(32,)",
            "--config.grid.model.conv2_filters=(64,)",
            "--config.grid.model.filter_size=(5,)",
            "--config.grid.model.dense_width=(64,)",
        )

    def tune(name: str, workdir: str, *extra: str) -> tuple[str, tuple[str, ...]]:
        return workdir, _script(
            "tune", f"--config={cfg(name)}", f"--workdir={runs / workdir}", *data("trial."), *extra
        )

    pytest_argv = (
        PY,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        # Not setup.cfg's addopts: pytest-xdist need not be on the GPU machine.
        "-o",
        "addopts=-ra --strict-markers --import-mode=importlib",
        f"--junitxml={out / 'pytest_gpu.xml'}",
        str(ROOT / "tests"),
    )
    benchmark = _script(
        "benchmark",
        f"--config={cfg('benchmark')}",
        f"--workdir={out}",
        f"--config.methods={BENCHMARK_METHODS}",
        "--config.memory_scaling.steps=()",
        # A fresh init (no trained workdir on a new machine): its agreement with PyTorch
        # is recorded in benchmark.json, not enforced (Score-CAM's Pearson thresholds
        # were set on the trained CNN). The perturbation methods evaluate all 256
        # images per pass on both sides.
        "--config.allow_disagreement=True",
        *(
            ()
            if smoke
            else (
                "--config.batch_sizes=(256,)",
                "--config.options.score_cam.batch_size=256",
                "--config.options.occlusion.batch_size=256",
                # A GPU has no CPU worker threads to let settle, and 3 medians of
                # >= 0.2 s samples suffice there: 0.5 s x 2 x 5 pauses per row would
                # be a minute of the step's budget.
                "--config.settle_s=0.05",
                "--config.repeats=3",
            )
        ),
        *(("--config.data_name=synthetic", "--config.train.config=") if smoke else ()),
    )
    return [
        # The rehearsal lists what is missing and installs nothing (captum would pull
        # torch into the environment that rehearses).
        Step(
            "install",
            90,
            (("install", (PY, __file__, "--install_only", *(("--dry_run",) if smoke else ()))),),
        ),
        Step("pytest", 150, (("pytest -m gpu", pytest_argv),)),
        Step("benchmark", 330, (("benchmark", benchmark),)),
        Step(
            "goals",
            180,
            (
                tune("tune_resnet", "resnet_3x64", *resnet_point),
                tune("tune_cnn", "cnn_best_screened", *cnn_point),
            ),
            results=("resnet_3x64", "cnn_best_screened"),
        ),
        Step(
            "studies",
            150,
            (
                (
                    "sae",
                    _script(
                        "sae_study", f"--config={cfg('sae_fmnist')}", f"--workdir={runs / 'sae'}"
                    )
                    + data(""),
                ),
                (
                    "cnn_fmnist",
                    _script(
                        "train", f"--config={cfg('cnn_fmnist')}", f"--workdir={runs / 'cnn_fmnist'}"
                    )
                    + data(""),
                ),
            ),
            results=("sae", "cnn_fmnist"),
        ),
        Step(
            "grids",
            600,
            (tune("tune_resnet", "tune_resnet"), tune("tune_cnn", "tune_cnn")),
            results=("tune_resnet", "tune_cnn"),
        ),
    ]


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is absent
        return False


def _pins() -> dict[str, str]:
    """constraints.txt's `name==version` lines, by name."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[name] = version
    return pins


def save_wheels(dest: Path) -> list[str]:
    """Saves the wheels of PURE_PYTHON at their pinned versions into `dest`, building
    one where the release has only a source archive (grad-cam), so that `install`
    needs no index. Returns the wheel files."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = _pins()
    for dist in PURE_PYTHON:
        argv = [PY, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest)]
        if subprocess.run([*argv, f"{dist}=={pins[dist]}"]).returncode != 0:
            raise SystemExit(
                f"gpu-check: pip could not fetch {dist}=={pins[dist]} (it says why above); "
                "run `make gpu-data` where pip reaches PyPI"
            )
    names = sorted(p.name for p in dest.glob("*.whl"))
    platform_bound = [n for n in names if not n.endswith("-py3-none-any.whl")]
    if platform_bound:
        raise SystemExit(f"gpu-check: {platform_bound} are not pure-Python wheels")
    return names


def install(wheels: Path | None, dry_run: bool = False, site: Path | None = None) -> dict:
    """pip-installs the distributions of NEEDED that do not import, one at a time (one
    that cannot be resolved does not stop the others), pinned by constraints.txt
    except that whatever is installed stays at its version. Where this Python's
    site-packages is read-only (a system image), they go to `site`, which the steps
    find on PYTHONPATH."""
    missing = sorted({dist for module, dist in NEEDED.items() if not _importable(module)})
    if not missing or dry_run:
        return {"missing": missing}
    pins = [f"{name}=={_installed(name) or version}" for name, version in _pins().items()]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(pins) + "\n")
    argv = [PY, "-m", "pip", "install", "--quiet", "-c", f.name]
    if wheels is not None:
        argv += ["--no-index", "--find-links", str(wheels)]
    if site is not None and not os.access(sysconfig.get_paths()["purelib"], os.W_OK):
        # pip --target sees nothing installed, so it would fetch torch for captum:
        # the dependencies are the machine's.
        argv += ["--target", str(site), "--no-deps"]
        sys.path.insert(0, str(site))
    failed = {}
    for dist in missing:
        extra = ["--no-deps"] if dist in NO_DEPS else []
        proc = subprocess.run([*argv, *extra, dist], capture_output=True, text=True)
        if proc.returncode != 0:
            failed[dist] = proc.stderr.strip()[-600:]
    os.unlink(f.name)
    importlib.invalidate_caches()
    # What pip put in place must import as the steps import it, with the dependencies
    # it was not given.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, (str(site) if site else None, str(ROOT), env.get("PYTHONPATH")))
    )
    for module, dist in NEEDED.items():
        if dist in missing and dist not in failed:
            statement = IMPORTED_AS.get(module, f"import {module}")
            check = subprocess.run([PY, "-c", statement], capture_output=True, text=True, env=env)
            if check.returncode != 0:
                failed[dist] = check.stderr.strip()[-600:]
    result = {"missing": missing, "installed": {d: _installed(d) for d in missing}}
    if failed:
        print(json.dumps({**result, "failed": failed}))
        raise SystemExit(f"pip could not install {sorted(failed)} (the steps needing them fail)")
    return result


def gpu_name() -> str | None:
    """The first GPU's name from nvidia-smi, without starting JAX in this process (on
    a GPU it would hold 75% of the device for the whole run)."""
    if shutil.which("nvidia-smi") is None:
        return None
    proc = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
    )
    names = proc.stdout.strip().splitlines()
    return names[0].strip() if proc.returncode == 0 and names else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _copy_tables(workdir: Path, dest: Path) -> list[str]:
    """The small result files (*.md, *.json, *.csv) of a study's workdir and of its
    `best/` run, not its checkpoints or trials."""
    copied = []
    for folder in (workdir, workdir / "best"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in (".md", ".json", ".csv") and path.stat().st_size < 2_000_000:
                target = dest / path.relative_to(workdir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied.append(str(target.relative_to(dest.parent)))
    return copied


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = started + args.budget_s * (SMOKE_BUDGET_SCALE if args.smoke else 1)
    name = gpu_name()
    if name is None and not args.smoke:
        print(
            "gpu-check: nvidia-smi finds no GPU; on a CPU run the rehearsal instead "
            "(make gpu-check GPU_CHECK_SMOKE=1)",
            file=sys.stderr,
        )
        return 2
    if args.data_dir and not any((Path(args.data_dir) / "fashion_mnist").glob("*-ubyte*")):
        print(
            f"gpu-check: --data_dir={args.data_dir} holds no fashion_mnist/*-ubyte.gz; "
            "`make gpu-data` copies Debian's files to .gpu_data/",
            file=sys.stderr,
        )
        return 2
    if args.wheels and not Path(args.wheels).is_dir():
        print(f"gpu-check: --wheels={args.wheels} is not a folder", file=sys.stderr)
        return 2
    machine = name or f"{platform.machine()}-{os.cpu_count()}cores"
    runs = Path(args.runs or ROOT / "runs" / ("gpu_check_smoke" if args.smoke else "gpu_check"))
    out = Path(
        args.out or (runs / "docs" if args.smoke else ROOT / "docs/benchmark" / _slug(machine))
    )
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "gpu_check.json"
    record = {"machine": machine, "smoke": args.smoke, "budget_s": args.budget_s, "commands": []}
    # A check split over several commands (--steps) adds to the record of the earlier
    # ones in the same folder; the last entry of a command is its latest run.
    if record_path.is_file():
        try:
            earlier = json.loads(record_path.read_text())["commands"]
            if not isinstance(earlier, list):
                raise TypeError(earlier)
            record["commands"] = earlier
        except (ValueError, KeyError, TypeError):  # kept, and a new record begun
            n = 1
            while (aside := record_path.with_suffix(f".{n}.json")).exists():
                n += 1
            record_path.rename(aside)
            print(f"gpu-check: {record_path} was not a record of commands; kept as {aside}")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # Where `install` puts what a read-only site-packages cannot take.
    site = runs / "site"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None, (str(ROOT), str(site), os.environ.get("PYTHONPATH")))
        ),
        GPU_CHECK_SITE=str(site),
    )
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.data_dir:
        env["FMI_DATA_DIR"] = str(Path(args.data_dir).resolve())
    wheels = args.wheels or (args.data_dir and Path(args.data_dir) / "wheels")
    if wheels and Path(wheels).is_dir():
        env["GPU_CHECK_WHEELS"] = str(Path(wheels).resolve())
    plan = [s for s in steps(args.smoke, runs, out) if not args.steps or s.name in args.steps]
    failures = 0
    plan_commands = [command for step in plan for command in step.commands]
    for index, step in enumerate(plan, 1):
        # The budgets are sized for the GPU; the rehearsal checks the plumbing on a CPU
        # that compiles everything cold, often beside other work, so it gets more time.
        budget = step.budget_s * (SMOKE_BUDGET_SCALE if args.smoke else 1)
        step_deadline = min(deadline, time.monotonic() + budget)
        for label, argv in step.commands:
            left = step_deadline - time.monotonic()
            entry = {"step": step.name, "command": label, "run_started": started_at}
            entry["argv"] = list(argv)
            if left < 5:
                entry.update(status="skipped", reason="out of time")
            elif step.name == "benchmark" and not _importable("torch"):
                entry.update(status="skipped", reason="torch is not installed")
            else:
                # One log per run of a command: a later --steps run keeps the earlier's.
                log = out / "logs" / f"{_slug(label)}.log"
                n = 1
                while log.exists():
                    log = out / "logs" / f"{_slug(label)}.{n}.log"
                    n += 1
                log.parent.mkdir(parents=True, exist_ok=True)
                t0 = time.monotonic()
                with log.open("w") as f:
                    # Its own process group: at the budget, its children (pip, the
                    # benchmark's memory probes) stop with it.
                    proc = subprocess.Popen(
                        argv,
                        cwd=ROOT,
                        env=env,
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                    try:
                        rc = proc.wait(timeout=left)
                        status = "ok" if rc == 0 else f"failed (exit {rc})"
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                        status = f"stopped at its budget ({left:.0f} s)"
                entry.update(status=status, seconds=round(time.monotonic() - t0, 1), log=str(log))
                failures += status != "ok"
            print(
                f"[gpu-check {index}/{len(plan)} {step.name}] {label}: {entry['status']}"
                + (f" in {entry['seconds']:.0f} s" if "seconds" in entry else "")
                + f"; {deadline - time.monotonic():.0f} s left",
                flush=True,
            )
            record["commands"].append(entry)
            record["elapsed_s"] = round(time.monotonic() - started, 1)
            record_path.write_text(json.dumps(record, indent=2) + "\n")
        for workdir in step.results:
            _copy_tables(runs / workdir, out / workdir)
    print(f"gpu-check: {len(plan_commands)} commands, {failures} not ok; results in {out}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="rehearse every step with :smoke configs"
    )
    parser.add_argument("--budget_s", type=float, default=560, help="the whole run's time")
    parser.add_argument("--steps", nargs="*", help="run only these steps")
    parser.add_argument("--out", help="results folder (default docs/benchmark/<gpu-name>)")
    parser.add_argument("--runs", help="workdirs of the studies (default runs/gpu_check)")
    parser.add_argument("--data_dir", help="folder holding fashion_mnist/ (sets FMI_DATA_DIR)")
    parser.add_argument(
        "--wheels",
        help="folder of wheels for an offline install (default <data_dir>/wheels, if any)",
    )
    parser.add_argument(
        "--save_wheels", metavar="FOLDER", help="save the pure-Python wheels to carry, and stop"
    )
    parser.add_argument("--install_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dry_run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.save_wheels:
        print("\n".join(save_wheels(Path(args.save_wheels))))
        return 0
    if args.install_only:
        wheels, site = os.environ.get("GPU_CHECK_WHEELS"), os.environ.get("GPU_CHECK_SITE")
        result = install(
            Path(wheels) if wheels else None, args.dry_run, Path(site) if site else None
        )
        print(json.dumps(result))
        return 0
    known = {s.name for s in steps(False, Path("."), Path("."))}
    unknown = sorted(set(args.steps or ()) - known)
    if unknown:
        print(f"gpu-check: unknown step(s) {unknown}; choose from {sorted(known)}", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
