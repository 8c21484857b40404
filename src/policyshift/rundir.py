"""The run directory: one owner at a time (a lock file) and one state that every command reads.

States (run_state): `fresh` (nothing a run writes is there), `started` (a run began but died before
its first checkpoint: nothing to resume), `resumable` (checkpoints, no complete final/), `finished`
(final/ complete: its manifest written). prepare_run_dir turns a request (start / resume,
overwrite, train.steps) plus the state into what happens, or one line saying why not:

| state | start | start + overwrite | resume |
|---|---|---|---|
| fresh | start | start | error: nothing to resume |
| started | start over (note) | start over | error: nothing to resume |
| resumable | error: use --resume / overwrite | remove the run's files, start | continue (not below its step) |
| finished | error: use --resume / overwrite | remove the run's files, start | extend if train.steps > its step, else nothing changes |

Removing a run removes what a run writes (RUN_FILES, RUN_DIRS) and nothing else in the directory."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

from policyshift.manifest import MANIFEST
from policyshift.errors import RunDirError  # noqa: F401 (defined in errors.py; old import path)
from policyshift.runfiles import CONFIG_FILE, RUN_FILES  # noqa: F401 (RUN_FILES: the run's files, named once in runfiles.py)

# everything `policyshift train` writes into its output directory besides RUN_FILES (the MLflow store, mlflow.db and
# mlartifacts/, and wandb/ hold several runs each and are not one run's files)
RUN_DIRS = ("checkpoints", "final", "rollouts", "tb")
LOCK = ".policyshift.lock"


@dataclass
class RunState:
    kind: str  # fresh | started | resumable | finished
    step: int | None = None  # the newest checkpoint's step (None: no checkpoint, or its state is unreadable)


def _newest_step(path: Path) -> tuple[bool, int | None]:
    from policyshift.checkpoint import list_checkpoints

    checkpoints = list_checkpoints(path)
    if not checkpoints:
        return False, None
    try:
        return True, int(json.loads((checkpoints[-1] / "trainer_state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return True, None  # damaged: the resume's integrity check says which file and falls back


def _final_complete(path: Path) -> bool:
    final = path / "final"
    if (final / MANIFEST).is_file():
        return True
    # final/ of a run from before manifests: complete if it holds a model (a new run writes the manifest last)
    from policyshift.checkpoint import list_checkpoints

    old = not any((c / MANIFEST).is_file() for c in list_checkpoints(path))
    return old and ((final / "config.json").is_file() or (final / "adapter_config.json").is_file())


def run_state(path: str | Path) -> RunState:
    path = Path(path)
    has_checkpoint, step = _newest_step(path)
    if has_checkpoint:
        return RunState("finished" if _final_complete(path) else "resumable", step)
    # config.yaml alone does not make a run (it may be the user's own config kept there)
    written = [n for n in RUN_FILES if n != CONFIG_FILE and (path / n).exists()] + [n for n in RUN_DIRS if (path / n).exists()]
    return RunState("started" if written else "fresh")


def remove_run(path: Path) -> None:
    """Everything a run writes, and only that."""
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(path / name, ignore_errors=True)


# ---- the lock ----------------------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc): tells a live owner from a new process that got its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # cannot look at another machine's processes: assume it is running
    pid = int(owner.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    start = _process_start(pid)
    return start is None or owner.get("start") in (None, start)


def _create_exclusive(complete: Path, lock: Path) -> None:
    """`lock` appears with `complete`'s content, or FileExistsError. A hard link makes it appear whole;
    where links are not supported, O_EXCL creation and a write (a reader may then briefly see it empty)."""
    try:
        os.link(complete, lock)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(fd, "w") as f:
            f.write(complete.read_text())


class RunLock:
    """RUN_DIR/.policyshift.lock: {"pid", "host", "start"} of the process that writes the run. Created
    with a hard link from a complete temporary file, so it is never seen half-written. A lock whose
    process is gone (same host, pid dead or reused) is stale and taken over; this process may take
    its own lock again (a second trainer on the same directory, one after the other)."""

    def __init__(self, path: Path):
        self.path = path / LOCK
        self.held = False

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}
        tmp = self.path.with_name(f"{LOCK}.{me['pid']}.tmp")
        tmp.write_text(json.dumps(me))
        try:
            for _ in range(3):
                try:
                    _create_exclusive(tmp, self.path)
                    break
                except FileExistsError:
                    owner = self.owner()
                    if owner is not None and (owner.get("pid"), owner.get("host")) == (me["pid"], me["host"]):
                        break
                    if owner is not None and _alive(owner):
                        raise RunDirError(f"{self.path.parent} is in use by process {owner['pid']} on {owner['host']}; wait for it to end "
                                          f"(if no such process runs, delete {self.path})") from None
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
            else:
                raise RunDirError(f"cannot take the lock {self.path}: another process keeps taking it")
        finally:
            tmp.unlink(missing_ok=True)
        self.held = True
        atexit.register(self.release)
        return self

    def owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) else None
        except (OSError, ValueError):
            return None  # unreadable: not written by a live RunLock (those are complete before they appear)

    def release(self) -> None:
        if self.held and (self.owner() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


# ---- what a request does to the directory ------------------------------------------------------------
def prepare_run_dir(output_dir: str | Path, overwrite: bool, resume: bool = False, steps: int | None = None) -> RunLock:
    """Take the directory for this run (lock) and make it ready, or RunDirError (one line) and change
    nothing. `steps`: the run's train.steps (a resume may not go below its checkpoint's step)."""
    if not str(output_dir).strip():
        raise RunDirError("train.output_dir is empty; name the directory the run writes to")
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"output directory {path} is not writable ({exc.strerror})") from None
    lock = RunLock(path).acquire()
    try:
        _apply(path, run_state(path), overwrite, resume, steps)
    except BaseException:
        lock.release()
        raise
    return lock


def _apply(path: Path, state: RunState, overwrite: bool, resume: bool, steps: int | None) -> None:
    if resume:
        if state.kind in ("fresh", "started"):
            raise RunDirError(f"{path} has no checkpoint to resume from; start it again without resume")
        if steps is not None and state.step is not None:
            extend = f"nothing changed (pass --train.steps N with N > {state.step} to extend it)"
            if steps < state.step:
                raise RunDirError(f"{path} is already at step {state.step}; train.steps {steps} would go back; {extend}")
            if state.kind == "finished" and steps == state.step:
                raise RunDirError(f"{path} is finished at step {state.step}; {extend}")
        if state.kind == "finished":  # extended: final/ is written again when the longer run ends
            shutil.rmtree(path / "final")
        return
    if state.kind == "started":
        warnings.warn(f"{path}: the previous run there stopped before its first checkpoint; starting it over", stacklevel=3)
        remove_run(path)
    elif state.kind in ("resumable", "finished"):
        if not overwrite:
            where = f"finished at step {state.step}" if state.kind == "finished" else "resumable"
            raise RunDirError(f"{path} already holds a run ({where}); use --resume {path} to continue it or --train.overwrite true to replace it")
        remove_run(path)
