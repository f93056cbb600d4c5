"""Many devices (fmi_jax/parallel.py): data-parallel training and sharded attribution.

The pytest process has one CPU device, and XLA_FLAGS must be set before jax starts,
so the multi-device checks run in a subprocess with four simulated host devices
(`--xla_force_host_platform_device_count=4`) that computes on one device and on
four in the same process and reports both; the assertions are made here.
"""

import functools
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from fmi_jax import parallel

ROOT = Path(__file__).resolve().parents[1]


def run_devices(script: str, devices: int = 4, timeout: int = 600, env=None) -> dict:
    """Runs `script` in a fresh Python with `devices` CPU devices; returns the JSON it
    prints on its last stdout line. A failing subprocess fails the test with its stderr."""
    env = {
        **os.environ,
        "XLA_FLAGS": (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        ).strip(),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"subprocess exited with {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
            f"\n--- stderr\n{proc.stderr[-8000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- training
TRAIN_SCRIPT = """
import json, tempfile
from pathlib import Path
from unittest import mock

import jax
import numpy as np

import configs
from fmi_jax import train
from fmi_jax.train import loop as loop_lib

assert jax.device_count() == 4, jax.devices()


def config(num_devices, num_epochs, **overrides):
    c = configs.load("cnn_fmnist", "smoke")  # batch norm and dropout: both must agree
    c.data.name = "synthetic"
    c.data.options = {"num_train": 320, "num_test": 64}
    c.data.train_limit = None
    c.progress = False
    c.augment = {"flip": True, "crop_padding": 2, "erasing": 0.0}  # random, per example
    c.model.features = (4, 8)
    with c.unlocked():  # the config's model leaves pool to the model's default
        c.model.pool = (True, True)
    c.model.dense = (16,)
    c.num_devices = num_devices
    c.num_epochs = num_epochs
    for k, v in overrides.items():
        c[k] = v
    return c


tmp = Path(tempfile.mkdtemp())
errors = {}
for name, overrides in {
    "too_many": {"num_devices": 8},
    "batch": {"num_devices": 4, "batch_size": 30},
    "eval_batch": {"num_devices": 4, "eval_batch_size": 250},
}.items():
    try:
        train.train_and_evaluate(config(**{"num_devices": 1, "num_epochs": 1, **overrides}), tmp / name)
        errors[name] = None
    except ValueError as e:
        errors[name] = [str(e), (tmp / name).exists()]

one = train.train_and_evaluate(config(1, 2), tmp / "one")
# Four devices, interrupted after epoch 1 and resumed: the restored state goes back
# onto the mesh.
real_append = loop_lib._append_jsonl


def crash_after_first_epoch(path, record):
    real_append(path, record)
    raise KeyboardInterrupt("simulated interruption")


try:
    with mock.patch.object(loop_lib, "_append_jsonl", crash_after_first_epoch):
        train.train_and_evaluate(config(4, 2), tmp / "four")
except KeyboardInterrupt:
    pass
four = train.train_and_evaluate(config(4, 2), tmp / "four")

leaves = lambda r: [np.asarray(x) for x in jax.tree.leaves((r.state.params, r.state.batch_stats))]
diff = [np.abs(a - b) for a, b in zip(leaves(one), leaves(four))]
print(json.dumps({
    "errors": errors,
    "max_abs": max(float(d.max()) for d in diff),
    "max_rel": max(
        float((d / (np.abs(a) + 1e-3)).max()) for d, a in zip(diff, leaves(one))
    ),
    "close": all(
        np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(leaves(one), leaves(four))
    ),
    "history": [one.history, four.history],
    "summary": [one.summary, four.summary],
    "written": json.loads((tmp / "four" / "train_summary.json").read_text()),
    "compiles": [
        [r.train_step_compiles, r.eval_step_compiles] for r in (one, four)
    ],
    "sharding": [
        str(x.sharding) for x in jax.tree.leaves(four.state.params)[:1]
    ] + [x.sharding.num_devices for x in jax.tree.leaves(four.state)
         if isinstance(x, jax.Array)][:1],
    "replicated": all(x.is_fully_replicated for x in jax.tree.leaves(four.state.params)),
}))
"""


@pytest.mark.slow
def test_four_devices_train_like_one():
    out = run_devices(TRAIN_SCRIPT)
    errors = out["errors"]
    assert "xla_force_host_platform_device_count" in errors["too_many"][0]
    assert errors["batch"][0] == (
        "batch_size 30 is not divisible by the 4 devices; use a multiple of 4"
    )
    assert "eval_batch_size 250 is not divisible by the 4 devices" in errors["eval_batch"][0]
    # The errors come before anything in the workdir is written.
    assert not any(exists for _, exists in errors.values())

    # Measured: parameters differ by at most ~1e-7 (relative ~1e-5 on the smallest).
    assert out["close"], (out["max_abs"], out["max_rel"])
    assert out["max_abs"] < 1e-5
    one, four = out["history"]
    assert [r["epoch"] for r in four] == [1, 2] and four[1]["step"] == 16
    for a, b in zip(one, four):
        for key in ("train_accuracy", "val_accuracy"):
            assert a[key] == b[key], (key, a[key], b[key])
        for key in ("train_loss", "val_loss", "grad_norm", "param_norm"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
    s1, s4 = out["summary"]
    assert s1["num_devices"] == 1 and s4["num_devices"] == 4
    assert out["written"]["num_devices"] == 4
    assert s1["test_accuracy"] == s4["test_accuracy"]
    np.testing.assert_allclose(s1["test_loss"], s4["test_loss"], rtol=1e-5)
    assert out["compiles"] == [[1, 1], [1, 1]]
    assert "'data': 4" in out["sharding"][0] and out["sharding"][1] == 4
    assert out["replicated"]


# --------------------------------------------------------------------------- attribution
ATTRIBUTION_SCRIPT = """
import json

import jax
import numpy as np

from fmi_jax import models, parallel
from fmi_jax.attribution import explainer
from fmi_jax.attribution.core import example_keys

assert jax.device_count() == 4, jax.devices()
model = models.get_model("cnn_fmnist", features=(4,), pool=(True,), dense=(16,))
x = np.random.RandomState(0).rand(13, 28, 28, 1).astype(np.float32)
variables = model.init(jax.random.key(0), x[:1], train=False)
fn = lambda x: model.apply(variables, x, train=False)
key = jax.random.key(7)
target = np.arange(13, dtype=np.int32) % 10
one, four = parallel.make_mesh(1), parallel.make_mesh(4)

out = {}
for name, options, batch_sizes in [
    ("integrated_gradients", {"steps": 8}, {"one_device": (one, 8), "four_devices": (four, 8),
                                            "four_devices_batch_4": (four, 3)}),
    ("smoothgrad", {"samples": 4, "stdev": 0.3}, {"one_device": (one, 8),
                                                  "four_devices": (four, 8),
                                                  "four_devices_batch_16": (four, 16)}),
]:
    explain = explainer(name, fn, **options)
    # The reference: the whole dataset in one call, example i keyed fold_in(key, i).
    reference = np.asarray(jax.jit(explain)(x, target, example_keys(key, len(x))))
    runs = {
        run: parallel.attribute_dataset(explain, x, target, key, mesh=mesh, batch_size=size)
        for run, (mesh, size) in batch_sizes.items()  # batch_size 3 is rounded up to 4
    }
    out[name] = {
        "shape": list(runs["four_devices"].shape),
        "scale": float(np.abs(reference).max()),
        **{k: float(np.abs(v - reference).max()) for k, v in runs.items()},
    }
out["smoothgrad"]["other_key"] = float(np.abs(parallel.attribute_dataset(
    explain, x, target, jax.random.key(8), mesh=four, batch_size=8) - reference).max())
print(json.dumps(out))
"""


@pytest.mark.slow
def test_attribute_dataset_is_the_same_on_any_devices_and_chunks():
    out = run_devices(ATTRIBUTION_SCRIPT)
    for name, diffs in out.items():
        assert diffs["shape"] == [13, 28, 28, 1], name
        assert diffs["scale"] > 0, name
        # Measured: bit-identical (0.0) for every device count and chunk size.
        runs = [k for k in diffs if k.startswith(("one_", "four_"))]
        assert len(runs) == 3, diffs
        for run in runs:
            assert diffs[run] <= 1e-6 * diffs["scale"], (name, run, diffs)
    # SmoothGrad is noisy: another key gives other maps (so the keys really are used).
    assert out["smoothgrad"]["other_key"] > 1e-3 * out["smoothgrad"]["scale"]


# --------------------------------------------------------------------------- in-process checks
def test_make_mesh_too_many_devices_names_the_xla_flag():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count=2"):
        parallel.make_mesh(jax.device_count() + 1)
    mesh = parallel.make_mesh()
    assert mesh.devices.size == jax.device_count() and mesh.axis_names == ("data",)
    assert parallel.batch_sharded(mesh).spec == jax.sharding.PartitionSpec("data")
    assert parallel.replicated(mesh).spec == jax.sharding.PartitionSpec()


def test_check_divisible_message():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1] * 8), ("data",))
    with pytest.raises(ValueError) as e:
        parallel.check_divisible(100, mesh, "batch_size")
    assert str(e.value) == "batch_size 100 is not divisible by the 8 devices; use a multiple of 8"
    parallel.check_divisible(96, mesh)


def test_train_with_more_devices_than_exist_writes_nothing(tmp_path, synthetic_config):
    config = synthetic_config(num_devices=jax.device_count() + 1)
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        from fmi_jax import train

        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_attribute_dataset_on_one_device_matches_a_direct_call():
    from fmi_jax.attribution import explainer
    from fmi_jax.attribution.core import example_keys

    w = np.random.RandomState(1).randn(12, 3).astype(np.float32)
    fn = lambda x: x.reshape(x.shape[0], -1) @ w  # noqa: E731
    x = np.random.RandomState(2).rand(5, 2, 2, 3).astype(np.float32)
    explain = explainer("smoothgrad", fn, samples=3, stdev=0.5)
    key = jax.random.key(0)
    got = parallel.attribute_dataset(explain, x, None, key, batch_size=2, progress=True)
    want = explain(x, None, example_keys(key, 5))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="target must be"):
        parallel.attribute_dataset(explain, x, np.zeros(4, np.int32), key)
    # An int64 class is checked before the cast to int32, which would wrap it to class 1.
    for wide in (np.full(5, 2**32 + 1), 2**32 + 1):
        with pytest.raises(ValueError, match="asks for class 4294967297"):
            parallel.attribute_dataset(explain, x, wide, key)
    with pytest.raises(ValueError, match=r"key must be a PRNG key, e\.g\. jax\.random\.key\(0\)"):
        parallel.attribute_dataset(explain, x, None, 0)
    rbg_data = jax.random.key_data(jax.random.key(0, impl="rbg"))
    with pytest.raises(ValueError, match=r"key data of shape \(4,\) is not a default PRNG key"):
        parallel.attribute_dataset(explain, x, None, rbg_data)
    # A deterministic method needs no key; one that draws noise says so.
    plain = explainer("saliency", fn)
    np.testing.assert_allclose(
        parallel.attribute_dataset(plain, x, None, None, batch_size=2), plain(x), rtol=1e-6
    )
    with pytest.raises(ValueError, match="smoothgrad"):
        parallel.attribute_dataset(explain, x, None, None)
    # What cannot run in jitted chunks is refused by name.
    for name, options, reason in [
        ("xrai", {"steps": 2}, "cannot be traced"),
        ("feature_permutation", {}, "mixes the examples of a batch"),
    ]:
        for wrap in (lambda f: f, functools.partial):
            with pytest.raises(ValueError, match=f"{name} .*{reason}"):
                parallel.attribute_dataset(wrap(explainer(name, fn, **options)), x, None, key)


def test_initialize_distributed_passes_its_arguments(monkeypatch):
    calls, updates = [], []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: updates.append(a))
    monkeypatch.setattr(parallel, "_wait_for_coordinator", lambda *a: None)
    parallel.initialize_distributed("10.0.0.1:1234", 2, 1, [0, 1])
    parallel.initialize_distributed(cpu_collectives=None)
    for address in ("localhost", "10.0.0.1:", ":1234"):
        with pytest.raises(ValueError, match=f"must be host:port .*got '{address}'"):
            parallel.initialize_distributed(address, 2, 0)
    assert updates == [("jax_cpu_collectives_implementation", "gloo")]  # before initialize
    assert calls == [
        {
            "coordinator_address": "10.0.0.1:1234",
            "num_processes": 2,
            "process_id": 1,
            "local_device_ids": [0, 1],
            "initialization_timeout": 300,
        },
        {
            "coordinator_address": None,
            "num_processes": None,
            "process_id": None,
            "local_device_ids": None,
            "initialization_timeout": 300,
        },
    ]


def test_distributed_flags_call_initialize(monkeypatch):
    from absl import flags

    from experiments import _distributed

    calls = []
    monkeypatch.setattr(parallel, "initialize_distributed", lambda **kw: calls.append(kw))
    try:
        flags.FLAGS(
            ["prog", "--distributed", "--coordinator_address=h:1", "--num_processes=2",
             "--process_id=1"]
        )  # fmt: skip
        _distributed.maybe_initialize()
    finally:
        for name in ("distributed", "coordinator_address", "num_processes", "process_id"):
            flags.FLAGS[name].unparse()
    assert calls == [
        {
            "coordinator_address": "h:1",
            "num_processes": 2,
            "process_id": 1,
            "initialization_timeout": 300,
        }
    ]
    _distributed.maybe_initialize()  # --distributed unset: nothing
    assert len(calls) == 1


def test_a_process_that_cannot_reach_the_coordinator_says_so_in_one_line(monkeypatch):
    """jax's client aborts the interpreter when the coordinator never answers; process 1
    first waits for the port (here 1 s) and raises a ValueError naming the address. A
    listening port lets it through, and process 0 (which starts the coordinator) never
    waits."""
    import socket

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        listening.listen()
        parallel.initialize_distributed(f"127.0.0.1:{port}", 2, 1, initialization_timeout=1)
    assert calls[-1]["initialization_timeout"] == 1
    # The port is closed now: nothing answers there.
    message = rf"^no coordinator answers at 127\.0\.0\.1:{port} after 1 s \(.+\): start process 0"
    with pytest.raises(ValueError, match=message):
        parallel.initialize_distributed(f"127.0.0.1:{port}", 2, 1, initialization_timeout=1)
    assert len(calls) == 1
    parallel.initialize_distributed(f"127.0.0.1:{port}", 2, 0, initialization_timeout=1)
    assert len(calls) == 2
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="initialization_timeout must be a whole number"):
            parallel.initialize_distributed(f"127.0.0.1:{port}", 2, 0, initialization_timeout=bad)


# --------------------------------------------------------------------------- two processes
MULTIHOST_SCRIPT = """
import json, sys

import jax

from fmi_jax import parallel  # initialize_distributed selects gloo for CPU collectives

parallel.initialize_distributed(f"localhost:{sys.argv[1]}", 2, int(sys.argv[2]))
import numpy as np

import configs
from fmi_jax import train

c = configs.load("cnn_fmnist", "smoke")
c.data.name = "synthetic"
c.data.options = {"num_train": 192, "num_test": 64}
c.data.train_limit = None
c.progress = False
c.model.features = (4,)
with c.unlocked():
    c.model.pool = (True,)
c.model.dense = (16,)
c.num_devices = 0
r = train.train_and_evaluate(c, sys.argv[3])

# A dataset attributed over the devices of both processes: example i keyed fold_in(key, i).
from fmi_jax.attribution import explainer
from fmi_jax.attribution.core import example_keys

w = np.random.RandomState(1).randn(12, 3).astype(np.float32)
fn = lambda x: x.reshape(x.shape[0], -1) @ w
x = np.random.RandomState(2).rand(6, 2, 2, 3).astype(np.float32)
explain = explainer("smoothgrad", fn, samples=3, stdev=0.5)
maps = parallel.attribute_dataset(explain, x, None, jax.random.key(0), batch_size=4)
local = jax.jit(explain, device=jax.local_devices()[0])
reference = np.asarray(local(x, None, example_keys(jax.random.key(0), 6)))
print(json.dumps({
    "process": [jax.process_index(), jax.process_count(), jax.device_count()],
    "summary": r.summary,
    "params": [float(np.abs(np.asarray(x)).sum()) for x in jax.tree.leaves(r.state.params)],
    "attribution_error": float(np.abs(maps - reference).max()),
}))
"""


@pytest.mark.slow
def test_two_processes_train_together(tmp_path):
    """Two local processes with two CPU devices each (gloo collectives) train one model."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MULTIHOST_SCRIPT, str(port), str(i), str(tmp_path / "run")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            if p.returncode != 0:
                pytest.fail(f"process exited with {p.returncode}\n{stderr[-8000:]}")
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["process"] for o in outs] == [[0, 2, 4], [1, 2, 4]]
    assert outs[0]["params"] == outs[1]["params"]
    assert [o["attribution_error"] < 1e-6 for o in outs] == [True, True]
    assert outs[0]["summary"]["num_devices"] == 4
    assert outs[0]["summary"]["num_processes"] == 2
    # Only process 0 wrote the files: one line per epoch, one summary.
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    assert not list((tmp_path / "run").glob("train_summary.*.json"))
