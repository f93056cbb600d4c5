"""Run Python code in a fresh process with nothing compiled beforehand: the timing
scripts (time_init.py, time_first_call.py) measure first calls this way.

The child imports this checkout's fmi_jax, runs with the persistent compilation cache
off, and prints its result as JSON on its last line of standard output.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_fresh(code: str, *args: str, what: str):
    """The JSON value the last line of ``code``'s output holds, run as
    ``python -c code *args``; exits with the child's error output, naming ``what``, if
    it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    if proc.returncode:
        sys.exit(f"error: {what} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
