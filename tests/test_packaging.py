"""What `make` installs is pinned, and the library stands on its own.

constraints.txt pins every package the install resolves; setup.cfg keeps lower
bounds (so fmi_jax installs next to other packages) and `make` applies the pins.
"""

import ast
import configparser
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Extras that no make target installs and no measured number depends on.
UNPINNED_EXTRAS = {"tfds-prepare"}


def _name(requirement: str) -> str:
    """The normalised project name of a requirement line ('orbax-checkpoint>=0.11')."""
    return re.sub(
        r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]
    ).lower()


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not an exact pin"
        assert _name(name) not in pins, f"constraints.txt pins {name} twice"
        pins[_name(name)] = version
    return pins


def _setup() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _requirements(value: str) -> list[str]:
    return [
        line.strip() for line in value.splitlines() if line.strip() and not line.startswith("#")
    ]


def test_every_declared_dependency_has_an_exact_pin():
    setup, pins = _setup(), _constraints()
    declared = _requirements(setup["options"]["install_requires"])
    for extra, value in setup["options.extras_require"].items():
        if extra not in UNPINNED_EXTRAS:
            declared += _requirements(value)
    missing = sorted({_name(r) for r in declared} - set(pins))
    assert not missing, f"add exact pins to constraints.txt for {missing}"


def test_the_benchmark_stack_is_pinned_in_setup_cfg_too():
    bench = _requirements(_setup()["options.extras_require"]["bench"])
    exact = {_name(r): r.split("==", 1)[1] for r in bench if "==" in r}
    assert exact.get("torch") == "2.13.0" and exact.get("captum") == "0.9.0", bench
    pins = _constraints()
    assert {name: pins[name] for name in exact} == exact


def test_pins_are_the_versions_the_committed_benchmarks_ran_on():
    """A CPU benchmark ran on constraints.txt's versions. An accelerator's ran on the
    jax and torch of the machine's image, which `make gpu-check` never replaces: those
    must be the ones its folder's environment.txt lists; what the check installed
    (captum, grad-cam) is pinned."""
    pins = _constraints()
    results = sorted((ROOT / "docs").rglob("benchmark.json"))
    assert results, "no committed benchmark results under docs/"
    for path in results:
        machine = json.loads(path.read_text())["machine"]
        expected = dict(pins)
        if machine.get("jax_backend", "cpu") != "cpu":
            listed = (path.parent / "environment.txt").read_text().splitlines()
            image = dict(line.split()[:2] for line in listed if len(line.split()) == 2)
            expected.update(jax=image["jax"], torch=image["torch"])
        for package, key in (
            ("jax", "jax"),
            ("torch", "torch"),
            ("captum", "captum"),
            ("grad-cam", "grad_cam"),
        ):
            if key in machine:
                recorded = machine[key].split("+", 1)[0]  # 2.13.0+cpu is the 2.13.0 release
                assert expected[package] == recorded, (path, package)


def test_types_ship():
    assert (ROOT / "fmi_jax" / "py.typed").exists()
    assert "py.typed" in _setup()["options.package_data"]["fmi_jax"]


def test_the_library_never_imports_configs_or_experiments():
    """configs/ and experiments/ are not installed with fmi_jax; a library module that
    imports them works only when started from a checkout."""
    offenders = []
    for path in sorted((ROOT / "fmi_jax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            if any(name.split(".")[0] in ("configs", "experiments") for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


# A lower layer never imports a higher one (docs/architecture.md).
FORBIDDEN_IMPORTS = {
    "fmi_jax/attribution": (
        "fmi_jax.train",
        "fmi_jax.studies",
        "fmi_jax.benchmark",
        "fmi_jax.plotting",
    ),
    "fmi_jax/evaluation": (
        "fmi_jax.train",
        "fmi_jax.studies",
        "fmi_jax.benchmark",
        "fmi_jax.plotting",
    ),
    "fmi_jax/plotting": ("jax", "fmi_jax.attribution", "fmi_jax.train", "fmi_jax.studies"),
    "fmi_jax/train": ("fmi_jax.plotting", "fmi_jax.studies", "fmi_jax.benchmark", "fmi_jax.report"),
    "fmi_jax/models": ("fmi_jax.data", "fmi_jax.train", "fmi_jax.attribution"),
    "fmi_jax/data": ("fmi_jax.models", "fmi_jax.train", "fmi_jax.attribution"),
    "fmi_jax/studies": ("fmi_jax.benchmark",),
    "fmi_jax/runs.py": ("jax", "fmi_jax"),
    "fmi_jax/layout.py": ("jax", "numpy", "fmi_jax"),
}


def _imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def test_layers_import_only_downwards():
    offenders = []
    for room, forbidden in FORBIDDEN_IMPORTS.items():
        target = ROOT / room
        paths = [target] if target.is_file() else sorted(target.rglob("*.py"))
        assert paths, room
        for path in paths:
            for name, line in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not offenders, offenders
