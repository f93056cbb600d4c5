r"""`--distributed` and friends: one training or explain run over several processes (hosts).

Every process runs the same command; process 0's address is the coordinator:

    # on host 0 (10.0.0.1) and host 1, with process_id 0 and 1:
    python -m experiments.train --config=configs/cnn_fmnist.py:... --workdir=/shared/run \
        --config.num_devices=0 --distributed --coordinator_address=10.0.0.1:1234 \
        --num_processes=2 --process_id=0

On Cloud TPU pods and under SLURM / Open MPI, `--distributed` alone is enough: jax
detects the rest. The workdir must be on a filesystem all processes see.
"""

from absl import flags

from fmi_jax import parallel

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize (a multi-process run)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (autodetected on TPU pods / SLURM)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes take part.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0 .. num_processes-1.")
_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds each process waits for the others to join."
)


def maybe_initialize() -> None:
    """`fmi_jax.parallel.initialize_distributed` with the flags, if --distributed is set."""
    if not _DISTRIBUTED.value:
        for flag in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID):
            if flag.value is not None:
                raise flags.ValidationError(f"--{flag.name} needs --distributed")
        return
    parallel.initialize_distributed(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
        initialization_timeout=_TIMEOUT.value,
    )
