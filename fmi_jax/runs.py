"""Run folders: how training runs and studies record their config and write their files.

A run folder (a training workdir, a study's output folder) belongs to one config. The
protocol every writer follows:

1. Validate everything that can be checked cheaply (the config, the data, the model,
   layer names) before anything is written, so a mistyped command leaves no trace.
2. `claim(folder, config, has_results=...)`: record the resolved config as
   `config.json`. The same config resumes. A different config replaces the record
   while the folder holds no results of the old one (an earlier attempt that failed
   before producing anything), unless the record has mostly other fields (another
   kind of run's record, whose results this caller cannot see: refused); once it does, a
   different config is refused with a `RunConfigError` naming every changed field,
   so results never mix configs. Fields the caller declares extendable (`num_epochs`)
   may grow: the new value is recorded and the extension is appended to
   `extensions.jsonl`.
3. Write every file atomically (`write_text_atomic`, `write_json_atomic`,
   `save_npz_atomic`: a temporary file in the same folder, fsync, rename), so a crash
   leaves either the old file or the new one, never half of one. `read_json(...,
   rewritable=True)` treats an empty or truncated file (left by a crash of code that
   wrote in place) as absent, so the next run recomputes it instead of failing; a
   damaged config record of a folder with results is refused instead, since nothing
   could then be compared with it, and so is a missing one where the caller says the
   record is `required` (a training run's checkpoints).

`plain(config)` is the one conversion of configs to JSON-able Python that all of them
use to record and compare configs. Standard library and numpy only, so the training
loop and every study can import it.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RunConfigError",
    "changes",
    "check",
    "claim",
    "claim_study",
    "folder_kind",
    "plain",
    "read_json",
    "refuse_other_kind",
    "save_npz_atomic",
    "set_aside",
    "subfolder",
    "write_json_atomic",
    "write_text_atomic",
]

_log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
EXTENSIONS_FILE = "extensions.jsonl"
_MAX_LISTED = 5
_ABSENT = "(absent)"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open(path, "w") would create


# --------------------------------------------------------------------------- configs
def _default(obj: Any) -> Any:
    if hasattr(obj, "to_json_best_effort"):  # an ml_collections ConfigDict
        return json.loads(obj.to_json_best_effort())
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
        return list(obj)
    return f"unserializable object: {obj}"  # as ConfigDict.to_json_best_effort records it


def plain(config: Any) -> Any:
    """`config` (an ml_collections ConfigDict or FrozenConfigDict, a mapping, a
    sequence or a scalar, nested) as plain JSON-able Python: dicts, lists (tuples
    become lists), str, int, float, bool and None; numpy arrays and scalars become
    lists and numbers, anything else its string. A ConfigDict goes through its own
    `to_json_best_effort`, so field references resolve and config.json stays what it
    always was (that method records numpy values inside a ConfigDict as strings: give
    configs Python numbers). A fresh copy: changing it leaves `config` alone."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=_default))


def _short(value: Any, limit: int = 60) -> str:
    if value is _ABSENT:
        return _ABSENT
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """`(path, old, new)` for every leaf where the plain configs `old` and `new` differ,
    paths dotted ('optimizer.learning_rate'); a side without the key has `'(absent)'`.
    Lists compare whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}{key}"
            if key not in old:
                out.append((path, _ABSENT, new[key]))
            elif key not in new:
                out.append((path, old[key], _ABSENT))
            else:
                out.extend(changes(old[key], new[key], path + "."))
        return out
    if old != new or type(old) is not type(new) and not _same_number(old, new):
        return [(prefix.rstrip(".") or "(config)", old, new)]
    return []


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


class RunConfigError(ValueError):
    """A run folder holds results of a config that differs from the one asked for;
    ``changed`` lists the changed fields, ``'a.b: old -> new, ...'``."""

    def __init__(self, message: str, changed: str = "") -> None:
        super().__init__(message)
        self.changed = changed


def _list_change(old: list, new: list) -> str:
    """What changed between two lists, by item: long lists (a study's input files) cut
    to their first characters would look alike."""
    added = [item for item in new if item not in old]
    removed = [item for item in old if item not in new]
    if not (added or removed):
        return "the same items, in another order or number"
    return "; ".join(
        f"{what} {len(items)}: {_short(items, 120)}"
        for what, items in (("added", added), ("removed", removed))
        if items
    )


def _describe(diff: list[tuple[str, Any, Any]]) -> str:
    listed = [
        f"{p}: {_list_change(a, b)}"
        if isinstance(a, list) and isinstance(b, list) and "..." in _short(a) + _short(b)
        else f"{p}: {_short(a)} -> {_short(b)}"
        for p, a, b in diff[:_MAX_LISTED]
    ]
    more = len(diff) - _MAX_LISTED
    return ", ".join(listed) + (f" and {more} more" if more > 0 else "")


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _another_kind(saved: Any, record: Any) -> bool:
    """Whether two records are configs of different kinds of run: fewer than 3 in 4 of
    their top-level fields in common (records of fewer than 4 fields are too small to
    tell). Configs of one kind share them all, but for a field or two that one version
    of fmi_jax adds; those of two studies share a few (seed, split, batch_size)."""
    if not (isinstance(saved, dict) and isinstance(record, dict)):
        return False
    if min(len(saved), len(record)) < 4:  # too few fields to tell: a version's field or two
        return False
    common, either = set(saved) & set(record), set(saved) | set(record)
    return len(common) < 0.75 * len(either)


def check(
    folder: str | Path,
    config: Any,
    *,
    extendable: Iterable[str] = (),
    free: Iterable[str] = (),
    has_results: bool,
    name: str = CONFIG_FILE,
    what: str = "another config",
    hint: str = "use another workdir (or the config it was run with)",
    required: bool = False,
) -> dict[str, tuple[Any, Any]]:
    """What `claim` would do, without writing: raises `RunConfigError` where `claim`
    would refuse; otherwise returns the extendable fields that would grow,
    `{path: (old, new)}`."""
    folder = Path(folder)
    try:
        # A damaged record of a folder with results cannot be compared with: refused,
        # or a changed config would go on from the old one's results unnoticed.
        saved = read_json(folder / name, rewritable=not has_results)
    except ValueError as error:
        raise RunConfigError(
            f"{folder / name} is damaged ({str(error.__cause__ or error)}), and {folder} holds "
            f"results of the config it recorded: write that config back into it, or {hint}. "
            "Nothing was overwritten.",
            changed=name,
        ) from None
    if saved is None:
        if required and has_results:
            raise RunConfigError(
                f"{folder} holds results but no {name}, so nothing shows which config they "
                f"came from: put the run's {name} back (a copy of the run has one), or {hint}. "
                "Nothing was overwritten.",
                changed=name,
            )
        return {}
    record = plain(config)
    extendable, free = tuple(extendable), tuple(free)
    if not has_results and _another_kind(saved, record):  # with results, all is listed below
        # Not an earlier attempt of this kind of run: another study's record (an explain
        # study's output named like the TCAV study's, photos explained into a training
        # run), whose results this caller cannot see. Never replaced.
        odd = sorted(set(saved) ^ set(record))
        raise RunConfigError(
            f"{folder / name} records a run with other fields than this config's ("
            f"{', '.join(odd[:_MAX_LISTED])}{' ...' if len(odd) > _MAX_LISTED else ''}): "
            f"another kind of run's record, whose results may lie beside it; {hint}. "
            "Nothing was overwritten.",
            changed=", ".join(odd),
        )
    if not has_results:
        return {}
    refused, extended = [], {}
    for path, old, new in changes(saved, record):
        if _under(path, free):
            continue
        if (
            path in extendable
            and isinstance(old, int)
            and isinstance(new, int)
            and not isinstance(old, bool)
            and new > old
        ):
            extended[path] = (old, new)
        else:
            refused.append((path, old, new))
    if refused:
        grow = [p for p in extendable if any(p == r[0] for r in refused)]
        raise RunConfigError(
            f"{folder} holds a run of {what} ({_describe(refused)}); {hint}"
            + (f". Only {', '.join(grow)} may change, and only grow" if grow else "")
            + ". Nothing was overwritten.",
            changed=_describe(refused),
        )
    return extended


def claim(
    folder: str | Path,
    config: Any,
    *,
    extendable: Iterable[str] = (),
    free: Iterable[str] = (),
    has_results: bool,
    name: str = CONFIG_FILE,
    what: str = "another config",
    hint: str = "use another workdir (or the config it was run with)",
    required: bool = False,
) -> dict[str, tuple[Any, Any]]:
    """Records `config` (made `plain`) as `folder/<name>` for this run; call it after
    everything checkable is checked, before the first result is written.

    No record (or an empty or truncated one): it is written, unless `required` and the
    folder has results (a training run's checkpoints: its record is what a changed
    config is compared with, so a lost one is refused, not rewritten from this config).
    The same config: nothing changes. A different one while `has_results` is False
    (nothing was produced from the recorded config, e.g. no checkpoint yet): the record
    is replaced, unless its top-level fields are mostly others than `config`'s: that is
    another kind of run's record, refused like a change with results. A different one
    with results: `RunConfigError` naming the changed fields (`a.b: old -> new`) and how
    to proceed (`hint`, `what` names the record in the message), unless every changed
    field is in `free` (changes accepted as they come: settings that do not alter the
    folder's results) or in `extendable` and grows (an int that got larger); then the
    record is rewritten and growth is appended to `folder/extensions.jsonl` (`{"time",
    "file", "fields": {path: {"before", "after"}}}`).

    Returns the extended fields, `{path: (old, new)}` (empty when none grew).
    """
    folder = Path(folder)
    extended = check(
        folder,
        config,
        extendable=extendable,
        free=free,
        has_results=has_results,
        name=name,
        what=what,
        hint=hint,
        required=required,
    )
    record = plain(config)
    path = folder / name
    saved = read_json(path, rewritable=True)
    if saved == record and path.read_text() == _config_text(record):
        return extended
    if saved is not None and saved != record:
        if has_results:
            _log.info("%s: recording the changed settings of %s", path, ", ".join(extended) or "-")
        else:
            _log.warning("%s: replaced (the folder holds no results of the old config)", path)
    if extended:
        line = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "file": name,
            "fields": {p: {"before": a, "after": b} for p, (a, b) in extended.items()},
        }
        _append_line(folder / EXTENSIONS_FILE, json.dumps(line, sort_keys=True))
    write_text_atomic(path, _config_text(record))
    return extended


CHECKPOINT_FILE = "checkpoint.json"


def claim_study(
    folder: str | Path,
    config: Any,
    *,
    epoch: int,
    model: str,
    has_results: bool,
    hint: str,
    free: Iterable[str] = (),
    results: Mapping[str, Any] | None = None,
    write: bool = True,
) -> None:
    """`claim` for a study of one trained checkpoint: `config` as `config.json`, and the
    model and checkpoint epoch it reads as `checkpoint.json`, both checked before either
    is recorded. A run's 'best' or 'latest' checkpoint moves when training goes on (and
    a study of several phases reads another model), while the study's config does not
    say which it read: results of another epoch or model are refused
    (``checkpoint_epoch: 8 -> 10``) instead of being reused as this one's.

    `results`: what the folder's results themselves record (``model``,
    ``checkpoint_epoch``), for results written before `checkpoint.json` named both; it
    becomes that record.

    `write=False` only checks: it raises where the claim would refuse, and writes
    nothing (for a study that has more to check before it may record anything)."""
    path = Path(folder) / CHECKPOINT_FILE
    saved = read_json(path, rewritable=True)
    results = results or {}
    if write and has_results and results.get("checkpoint_epoch") is not None:
        if saved is None or "model" not in saved:
            recorded = {
                "model": str(results.get("model", model)),
                "checkpoint_epoch": int(results["checkpoint_epoch"]),
            }
            write_json_atomic(path, recorded)
    records = (
        (config, CONFIG_FILE, "another config", free),
        (
            {"model": str(model), "checkpoint_epoch": int(epoch)},
            CHECKPOINT_FILE,
            "another checkpoint",
            (),
        ),
    )
    for step in (check, claim) if write else (check,):
        for record, name, what, fields in records:
            step(
                folder,
                record,
                free=fields,
                has_results=has_results,
                name=name,
                what=what,
                hint=hint,
            )


# What each kind of run folder holds at its top, and where its training runs are.
_KINDS = {
    "training run": ("checkpoints", "{0}"),
    "tuning study": ("trials", "{0}/best or {0}/trials/<name>"),
    "sparse-autoencoder study": ("study_config.json", "{0}/classifier (or autoencoder, finetune)"),
}
# The output folder of a study of one checkpoint (explain, evaluate_attributions,
# TCAV), inside the training run it read.
_STUDY_OUTPUT = "study output (explain, evaluate_attributions or TCAV)"


# A tuning study's trials/ folder: its training runs, one per grid point.
_TRIALS = "tuning study's trials folder"


# Folders a training run writes into its workdir.
_RUN_FOLDERS = frozenset(("checkpoints", "tensorboard"))


def folder_kind(folder: str | Path) -> str | None:
    """Which kind of run folder ``folder`` is, by what it holds: 'training run',
    'tuning study' or 'sparse-autoencoder study', a study's output, or a tuning study's
    trials/ (None: none of them, or empty)."""
    folder = Path(folder)
    for kind, (marker, _) in _KINDS.items():
        if (folder / marker).exists():
            return kind
    if (folder / CHECKPOINT_FILE).is_file():
        return _STUDY_OUTPUT
    # A folder named trials is the study marker itself, so the parent must show what
    # only a study writes besides it (its tables or its retrain) to be one.
    study = folder.parent
    if (
        folder.name == "trials"
        and folder.is_dir()
        and ((study / "results.json").is_file() or (study / "best").is_dir())
    ):
        if any(folder_kind(child) == "training run" for child in folder.iterdir()):
            return _TRIALS
    return None


def refuse_other_kind(folder: str | Path, kind: str) -> None:
    """A ValueError when ``folder`` is a run folder of another kind than ``kind``: one
    study's files written next to another's would mix runs (an SAE study inside a
    training run, a training run inside a tuning study, a study's output given as a
    training run); also when ``folder`` is a file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder: --workdir names a folder")
    found = folder_kind(folder)
    if found is None or found == kind:
        return
    if found == _TRIALS:
        raise ValueError(
            f"{folder} holds the trials of the tuning study {folder.parent}, not a {kind}: "
            f"use another --workdir (`python -m experiments.tune --workdir={folder.parent}` "
            "resumes that study)"
        )
    if found == _STUDY_OUTPUT:
        where = f" (the training run it read is {folder.parent})"
    elif found != "training run":
        where = f" (its training runs are {_KINDS[found][1].format(folder)})"
    else:
        where = ""
    raise ValueError(f"{folder} holds a {found}, not a {kind}: use another --workdir{where}")


def subfolder(workdir: str | Path, name: Any, field: str, reserved: Iterable[str] = ()) -> Path:
    """``workdir / name`` for an output folder named by the config field ``field``; a
    ValueError unless ``name`` is a relative path strictly inside ``workdir``. An empty
    name or ``'.'`` would make the workdir itself the output folder, and the study's
    config record would replace the training run's, as would a folder that is itself
    a run (an SAE study's ``classifier``) or the run's ``checkpoints`` or
    ``tensorboard`` (or a name in ``reserved``, the folders a study will write);
    ``'..'`` or an absolute path would write outside the workdir."""
    text = str(name)
    parts = Path(text).parts
    if not text.strip() or Path(text).is_absolute() or not parts or ".." in parts:
        raise ValueError(
            f"config.{field} must name a folder inside the workdir, such as 'explain', got {text!r}"
        )
    # Nor a folder of the run's own (its checkpoints, events, a study's training runs).
    for depth in range(1, len(parts) + 1):
        inside = Path(workdir, *parts[:depth])
        own = parts[depth - 1] in _RUN_FOLDERS or (depth == 1 and parts[0] in reserved)
        if own or folder_kind(inside) not in (None, _STUDY_OUTPUT):
            raise ValueError(
                f"config.{field}={text!r} would write into {inside}, which belongs to "
                f"{'the run' if own else 'a ' + str(folder_kind(inside))}: name another "
                "folder"
            )
    return Path(workdir) / text


def _config_text(record: Any) -> str:
    return json.dumps(record, indent=2, sort_keys=True)


# --------------------------------------------------------------------------- files
def set_aside(path: str | Path) -> Path:
    """Renames ``name.ext`` to the first free ``name.<n>.ext`` (n = 1, 2, ...) and
    returns the new path: a result that a rerun replaces is kept, never overwritten."""
    path = Path(path)
    n = 1
    while path.with_suffix(f".{n}{path.suffix}").exists():
        n += 1
    aside = path.with_suffix(f".{n}{path.suffix}")
    path.rename(aside)
    _log.info("kept the previous %s as %s", path.name, aside.name)
    return aside


def write_text_atomic(path: str | Path, text: str) -> None:
    """Writes `text` to `path` all at once: a temporary file in the same folder,
    flushed to disk, then renamed over `path` (parents are created). A failure leaves
    the old file, if any, as it was, and no temporary file behind."""
    _write_atomic(Path(path), lambda f: f.write(text.encode()))


def write_json_atomic(
    path: str | Path, obj: Any, *, sort_keys: bool = True, indent: int | None = 2
) -> None:
    """`obj` as JSON (`indent` 2, keys sorted unless `sort_keys=False`), atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


def save_npz_atomic(path: str | Path, /, **arrays: Any) -> None:
    """`np.savez_compressed(path, **arrays)`, atomically (`path` should end in .npz)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    _write_atomic(Path(path), lambda f: f.write(buffer.getvalue()))


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | Path, *, rewritable: bool = False) -> Any:
    """The JSON in `path`, or None when it does not exist.

    `rewritable=True` is for files fmi_jax writes and can write again (configs,
    summaries, caches): an empty or truncated one, as a crash of a non-atomic writer
    leaves, also reads as None (with a warning), so the caller recomputes it. Otherwise
    such a file raises ValueError naming it.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if rewritable:
            _log.warning("%s is empty or truncated (%s); treating it as absent", path, e)
            return None
        raise ValueError(f"{path} is not valid JSON ({e}); fix or move the file") from e
