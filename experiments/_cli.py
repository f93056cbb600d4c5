r"""`run(main)`: how every experiment script starts, and how it fails.

    if __name__ == "__main__":
        _cli.run(main)          # instead of absl's app.run(main)

`main` takes no arguments (flags are read from their holders); a positional
argument left over after the flags is a usage error.

Expected errors -- bad input, not bugs -- end the script with ONE line on stderr,

    error: config.batch_size must be an integer >= 1, got -32
    (run with --verbose for the traceback)

and exit status 2. Expected are:
  * ValueError (fmi_jax raises ValueError subclasses for bad input: DataError,
    ConfigValueError, CheckpointMismatchError, the run folder's config errors, ...);
  * FileNotFoundError (DataNotFoundError too), FileExistsError, PermissionError,
    NotADirectoryError, IsADirectoryError (a file where a folder goes, e.g. a
    --workdir that is a file, and the reverse; the line names the path);
  * NonFiniteLossError: a training loss that became NaN or infinite (the message names
    the step and what to change);
  * bad command lines: an unknown flag or a missing required one, a `--config.<field>`
    override that names no field of the config, a value that does not parse, a config
    file that does not load, a config variant that does not exist, leftover
    positional arguments (absl's flags.Error and app.UsageError).
A library message that spans several lines on purpose (DataNotFoundError lists every
place it looked) is printed whole after `error: `.

`--verbose` (or FMI_JAX_VERBOSE=1 in the environment) re-raises the expected error
instead, with its full traceback (exit status 1). Anything else is a bug: it keeps its
traceback and exit status 1.

Only the error goes to stderr from a failure found in the config: the scripts log
nothing before they call the library, and the library validates its config first. One
found later (by the data, the model or the trainer) follows the log lines of what ran
before it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType

from absl import app, flags
from ml_collections import config_flags

from fmi_jax import logs
from fmi_jax.train.trainer import NonFiniteLossError

__all__ = [
    "EXIT_EXPECTED",
    "EXIT_INTERRUPTED",
    "EXPECTED",
    "define_config",
    "expected_errors",
    "guard",
    "reference_packages",
    "run",
]

#: The exit status of an expected error.
EXIT_EXPECTED = 2
EXIT_INTERRUPTED = 130
#: What counts as an expected error (besides flag errors while parsing the command line).
EXPECTED: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
    ModuleNotFoundError,  # an optional extra (torch for .pth weights), with how to install it
    NonFiniteLossError,  # a training loss that became NaN or infinite, with what to change
    flags.Error,
    app.UsageError,
)
_ENV = "FMI_JAX_VERBOSE"

_VERBOSE = flags.DEFINE_bool(
    "verbose",
    False,
    f"Show the full traceback of an expected error (bad input) instead of one line; "
    f"also set by {_ENV}=1.",
)


def reference_packages(*names: str) -> list[ModuleType]:
    """The modules ``names`` (``"torch"``, ``"captum.attr"``, ...) of the reference
    implementations the comparison scripts run against, which only the benchmark's
    venv has: a missing one is an expected error that says which venv to use."""
    try:
        return [importlib.import_module(name) for name in names]
    except ImportError as error:
        raise ValueError(
            f"{error.name or 'a reference package'} is not installed here: run this script "
            "with the benchmark's venv, .venv-bench/bin/python (make .venv-bench/.installed)"
        ) from None


def run(main: Callable[[], object]) -> None:
    """absl's app.run(main), with expected errors printed as one line (exit status 2),
    both while the command line is parsed and while `main` runs."""
    app.run(guard(main), flags_parser=_parse_flags)


def guard(main: Callable[[], object]) -> Callable[[Sequence[str]], object]:
    """`main` as absl's app.run calls it (with the leftover argv), its expected errors
    turned into one line and SystemExit(2)."""

    def absl_main(argv: Sequence[str]) -> object:
        with expected_errors():
            if len(argv) > 1:
                raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
            logs.quiet_libraries()
            return main()

    return absl_main


@contextlib.contextmanager
def expected_errors(argv: Sequence[str] | None = None) -> Iterator[None]:
    """Turns an expected error raised inside into `error: <message>` on stderr and
    SystemExit(2); re-raises it when verbose (`argv` is read for --verbose when the
    flags are not parsed yet). Other exceptions pass through untouched."""
    try:
        yield
    except EXPECTED as error:
        if _verbose(argv):
            raise
        sys.stderr.write(f"error: {describe(error, argv)}\n")
        sys.stderr.write("(run with --verbose for the traceback)\n")
        raise SystemExit(EXIT_EXPECTED) from None
    except KeyboardInterrupt as interrupt:
        # Ctrl-C: training stops at a step boundary and says how to resume (its
        # message); no traceback unless verbose. 130 is the shell's 128 + SIGINT.
        if _verbose(argv):
            raise
        sys.stderr.write(f"interrupted{': ' + str(interrupt) if str(interrupt) else ''}\n")
        raise SystemExit(EXIT_INTERRUPTED) from None


def define_config(default: str | None, help: str) -> flags.FlagHolder:
    """The script's `--config` flag: ``config_flags.DEFINE_config_file`` locked.

    With a default file, ml_collections loads it and applies the command line's
    `--config.<field>` overrides while the flag is defined, as the script's module is
    imported: an override naming no field ends there, in the same one line and exit
    status 2 as when `--config` is given."""
    with _command_line_errors(sys.argv):
        return config_flags.DEFINE_config_file("config", default, help, lock_config=True)


def _parse_flags(argv: Sequence[str]) -> list[str]:
    """FLAGS(argv) with the expected errors of a bad command line made one line."""
    with _command_line_errors(argv):
        args = flags.FLAGS(list(argv))
        _load_configs_now()
    return args


@contextlib.contextmanager
def _command_line_errors(argv: Sequence[str]) -> Iterator[None]:
    """`expected_errors(argv)`, and a `--config.<field>` naming no field (an
    AttributeError or KeyError from inside ml_collections' flag parser, so those count
    here and only here) or overriding a config file that did not load made one line."""
    with expected_errors(argv):
        try:
            yield
        except (AttributeError, KeyError, IndexError) as error:
            message = _unknown_field(error, argv)
            if message is None:
                raise
            raise flags.IllegalFlagValueError(message) from error
        except OSError as error:
            # A `--config.<field>` override of a config file that did not load: the
            # override reaches the deferred load error while the flags are parsed.
            message = _unloaded_config(error, argv)
            if message is None:
                raise
            raise flags.IllegalFlagValueError(message) from error


def _load_configs_now() -> None:
    """ml_collections defers the error of a config file that does not load (a missing
    file) to the first use of the config; raise it while parsing instead."""
    for name in flags.FLAGS:
        value = flags.FLAGS[name].value
        if type(value).__name__ != "_ErrorConfig":
            continue
        error = getattr(value, "_error", None)
        if isinstance(error, OSError):
            raise flags.IllegalFlagValueError(_cannot_load(name, error))


def _cannot_load(name: str, error: BaseException) -> str:
    """The line for config flag `name` whose file did not load with `error`."""
    reason = str(error).strip().splitlines()[-1].strip()
    return f"--{name}: cannot load the config file: {reason}"


def _unloaded_config(error: OSError, argv: Sequence[str]) -> str | None:
    """The message for an override `--config.a=v` of a config file that did not load
    (ml_collections raises OSError from the loading error), or None when `error` is
    not that."""
    cause = error.__cause__
    if not isinstance(cause, OSError) or "earlier failure to load" not in str(error):
        return None
    for arg in argv[1:]:
        override = re.match(r"^--?(\w+)\.", arg)
        if override is not None and override.group(1) in flags.FLAGS:
            return _cannot_load(override.group(1), cause)
    return None


def _verbose(argv: Sequence[str] | None) -> bool:
    if os.environ.get(_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    if argv is None:  # no command line at hand: the parsed flag, if parsing happened
        return flags.FLAGS.is_parsed() and bool(_VERBOSE.value)
    verbose = False  # the command line itself (flags may be unparsed, or parsed for another)
    for arg in argv:
        if arg in ("--verbose", "-verbose"):
            verbose = True
        elif arg in ("--noverbose", "-noverbose"):
            verbose = False
        elif arg.startswith(("--verbose=", "-verbose=")):
            verbose = arg.split("=", 1)[1].strip().lower() in ("1", "true", "t", "yes")
    return verbose


def describe(error: BaseException, argv: Sequence[str] | None = None) -> str:
    """The message of an expected error, as its one line says it."""
    if isinstance(error, OSError) and error.filename is not None:
        # "[Errno 13] Permission denied: '/x'" -> "permission denied: /x"
        where = str(error.filename)
        if error.filename2 is not None:
            where += f" -> {error.filename2}"
        return f"{(error.strerror or type(error).__name__).lower()}: {where}"
    message = str(error).strip() or type(error).__name__
    if isinstance(error, flags.Error) and "Error whilst parsing config file" in message:
        # ml_collections puts the config file's whole traceback into the message: keep
        # the flag and the last line (the error the config file raised).
        flag = message.split(": Error whilst parsing config file", 1)[0]
        last = re.sub(r"^\w+(Error|Exception): ", "", message.splitlines()[-1].strip())
        return f"{flag.removeprefix('flag ')}: {last}"
    if isinstance(error, flags.Error):
        return message.removeprefix("flag ")
    return message


_QUOTED = re.compile(r"""^[\s'"\\]*([^\s'"\\]+)""")
_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)"')


def _unknown_field(error: BaseException, argv: Sequence[str]) -> str | None:
    """The message for an override `--config.a.b=v` naming no field of the config, or
    None when `error` is not that."""
    text = str(error)
    match = _QUOTED.match(text)
    if match is None:
        return None
    missing = match.group(1)
    for arg in argv[1:]:
        override = re.match(r"^--?(\w+)\.([\w.]+)(=.*)?$", arg)
        if override is None:
            continue
        parts = override.group(2).split(".")
        if missing not in parts:
            continue
        holder = ".".join([override.group(1), *parts[: parts.index(missing)]])
        line = f"{arg}: {holder} has no field {missing!r}"
        suggestion = _DID_YOU_MEAN.search(text)
        if suggestion:
            line += f" (did you mean {suggestion.group(1)!r}?)"
        return line
    return None
