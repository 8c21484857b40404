"""Checkpoints: `checkpoints/step-N/` holds the policy (+ tokenizer) and the critic (none for a
critic-free estimator) in `save_pretrained` form (safetensors), the optimizer and scheduler, every RNG
state and the trainer state as JSON, and last `manifest.json` (every file's size and SHA-256,
policyshift.manifest). Written to a temporary directory and renamed, so a kill during a save leaves
the previous checkpoint whole; a resume verifies the newest checkpoint against its manifest and falls
back to the newest one that verifies (restore_newest_intact)."""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from policyshift.faults import fault_point
from policyshift.lora import save_pretrained
from policyshift.manifest import IntegrityError, check_dir, write_manifest
from policyshift.errors import CheckpointError  # noqa: F401 (defined in errors.py; old import path)

STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": np_state[2], "has_gauss": np_state[3], "gauss": np_state[4]},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def split_state_dict(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of one submodule (`policy.`, `critic.`, `value_head.`) of a PolicyAndCritic state dict."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save_models(out: Path, models, tokenizer, policy_subdir: str = "policy", state_dict: dict | None = None) -> None:
    """A LoRA (peft) policy or critic is saved as its adapter (adapter_config.json naming the base +
    adapter_model.safetensors): the frozen base is already on disk where it was loaded from.
    `state_dict`: the whole PolicyAndCritic's weights gathered from sharded processes (FSDP, ZeRO-3),
    whose own modules hold only their slice."""
    from policyshift.lora import is_peft, save_adapter

    def weights(prefix: str):
        return None if state_dict is None else split_state_dict(state_dict, prefix)

    def save(model, path: Path, prefix: str) -> None:
        if is_peft(model):
            save_adapter(model, path)
        else:
            save_pretrained(model, path, state_dict=weights(prefix))

    save(models.policy, out / policy_subdir, "policy.")
    tokenizer.save_pretrained(out / policy_subdir)
    if models.critic is not None:
        save(models.critic, out / "critic", "critic.")
    elif models.value_head is not None:  # (a critic-free estimator has neither: no critic/ at all)
        (out / "critic").mkdir(parents=True, exist_ok=True)
        head = weights("value_head.") or models.value_head.state_dict()
        save_file({k: v.contiguous() for k, v in head.items()}, str(out / "critic" / "value_head.safetensors"))


def save_checkpoint(run_dir: Path, step: int, models, tokenizer, optimizer, scheduler, trainer_state: dict,
                    rank_generators: list[dict[str, torch.Tensor]], keep_last_n: int, *, sharded: dict | None = None) -> Path:
    """`rank_generators`: every process's named generator states (process i at index i); a resume
    needs the same number of processes. `sharded` (FSDP, DeepSpeed): {"model": the gathered weights,
    "optimizer": the gathered optimizer state or None, "engine_dir": a directory the engine wrote
    (DeepSpeed's own per-process checkpoint) moved in as `engine/`}."""
    wait_for_checkpoints()
    sharded = sharded or {}
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_models(tmp, models, tokenizer, state_dict=sharded.get("model"))
        fault_point("kill_in_checkpoint", step)
        fault_point("disk_full_in_checkpoint", step)
        if sharded.get("engine_dir"):
            shutil.move(str(sharded["engine_dir"]), str(tmp / "engine"))
        optim_state = sharded.get("optimizer") if sharded else optimizer.state_dict()
        torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        torch.save({**rng_state(), "rank_generators": rank_generators}, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(run_dir, step, exc) from None
    errors: list[CheckpointError] = []
    thread = threading.Thread(target=_finish, args=(tmp, final, Path(run_dir), step, keep_last_n, errors), name=f"checkpoint step-{step}")
    thread.start()
    _finishing.append((thread, errors))
    return final


# The manifest is written by a background thread: SHA-256 runs at about the speed a checkpoint's bytes
# are written, so hashing in line would add 25-50% to the write on the demo's models, and the training
# loop has no need to wait for it. The thread hashes every file into manifest.json, renames
# .tmp-step-N to step-N and prunes old checkpoints; until it has, step-N does not exist, so a kill in
# between leaves the previous checkpoint the newest. Readers in this process (list_checkpoints) and
# the next save wait for it (wait_for_checkpoints); Python waits for it at exit (not a daemon thread).
_finishing: list[tuple[threading.Thread, list]] = []


def _write_error(run_dir: Path, step: int, exc: OSError) -> "CheckpointError":
    previous = _listed(run_dir)
    kept = f"; {previous[-1].name} is intact" if previous else ""
    return CheckpointError(f"cannot write checkpoint step-{step} in {Path(run_dir) / 'checkpoints'} ({exc.strerror or exc}){kept}")


def _finish(tmp: Path, final: Path, run_dir: Path, step: int, keep_last_n: int, errors: list) -> None:
    try:
        fault_point("kill_in_manifest", step)
        write_manifest(tmp)  # last: hashes everything above, DeepSpeed's per-process files in engine/ included
        if final.exists():  # a re-save of the same step (e.g. a stop right after a periodic save): replace it whole
            shutil.rmtree(final)
        tmp.rename(final)  # atomic on one filesystem: a checkpoint dir either exists complete or not at all
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        errors.append(_write_error(run_dir, step, exc))
        return
    for old in _listed(run_dir)[:-keep_last_n]:
        shutil.rmtree(old, ignore_errors=True)


def wait_for_checkpoints() -> None:
    """Block until every checkpoint this process is writing is complete (manifest written, renamed
    into place); a write that failed raises its CheckpointError here."""
    while _finishing:
        thread, errors = _finishing.pop(0)
        thread.join()
        if errors:
            raise errors[0]


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first (after any this process is still finishing)."""
    wait_for_checkpoints()
    return _listed(run_dir)


def _listed(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    # every step-N directory: each was renamed into place complete; whether it is still intact is
    # check_checkpoint's question, so a damaged one is reported rather than silently skipped
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


LEGACY_REQUIRED = ("trainer_state.json", "optimizer.pt", "rng.pt")
# what a damaged file raises while loading: safetensors' SafetensorError is an Exception subclass of its own
LOAD_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError, IntegrityError)
try:
    from safetensors import SafetensorError

    LOAD_ERRORS += (SafetensorError,)
except ImportError:  # older safetensors: the error is a plain Exception subclass we cannot name
    pass


def check_checkpoint(ckpt: Path) -> tuple[int, bool]:
    """(files checked, verified by manifest?) or IntegrityError naming the bad file. A checkpoint
    written before manifests existed is checked by loading each file (load_check)."""
    return check_dir(ckpt, LEGACY_REQUIRED)


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, IntegrityError):
        return str(exc)
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [""]
    # load_state_dict's first line only says "Error(s) in loading state_dict"; the cause is below it
    cause = next((line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))), lines[0])
    return f"{type(exc).__name__}: {cause[:200]}"


def restore_newest_intact(run_dir: Path, restore, group=None) -> tuple[Path, dict]:
    """The newest intact checkpoint, restored: `restore(ckpt)` (returning the trainer state) runs on
    the newest checkpoint that passes check_checkpoint. Each damaged one is named in one warning line
    and moved aside to checkpoints/damaged-step-N (kept for inspection; the run writes step-N again).
    A checkpoint that verifies against its manifest but does not load into the live models is not
    damage but a different model (e.g. model.policy changed): CheckpointError at once. With several
    processes (`group`, a ProcessGroup) the main process verifies and every process follows its
    verdict, and a load error on any process counts for all: they agree on the same checkpoint."""
    one = group is None or group.world_size == 1
    is_main = one or group.is_main
    from_main = (lambda x: x) if one else (lambda x: group.gather_objects([x])[0])
    candidates = from_main([str(p) for p in reversed(list_checkpoints(run_dir))])
    rejected: list[tuple[Path, str]] = []
    for ckpt in map(Path, candidates):
        verdict = None
        if is_main:
            try:
                n, verified = check_checkpoint(ckpt)
                verdict = "verified" if verified else "loads"
                if not verified:
                    warnings.warn(f"{ckpt} has no manifest (written before policyshift checked integrity); its {n} files load", stacklevel=2)
            except IntegrityError as exc:
                verdict = str(exc)
        verdict = from_main(verdict)
        if verdict in ("verified", "loads"):
            error = None
            try:
                state = restore(ckpt)
            except CheckpointError:
                raise
            except LOAD_ERRORS as exc:
                error = f"{ckpt} does not load ({_first_line(exc)})"
            errors = [e for e in ([error] if one else group.gather_objects([error])) if e]
            if not errors:
                if is_main:
                    for bad, _ in rejected:
                        _move_aside(bad)
                return ckpt, state
            if verdict == "verified":
                raise CheckpointError(f"{errors[0]}; its files are intact, so this run's models differ from the ones it was written with")
            verdict = errors[0]
        rejected.append((ckpt, verdict))
        if is_main:
            warnings.warn(f"checkpoint {ckpt.name} is damaged: {verdict}; trying an older one", stacklevel=2)
    if not rejected:
        raise CheckpointError(f"{run_dir} has no checkpoint to resume from")
    raise CheckpointError(f"no checkpoint in {Path(run_dir) / 'checkpoints'} is intact ({len(rejected)} checked; newest: {rejected[0][1]})")


def verify_run(run_dir: Path) -> list[tuple[str, str | None, str]]:
    """`policyshift verify`: every checkpoint and final/ of a run, checked without training and
    without changing anything. One (name, problem or None, how it was checked) per directory."""
    run_dir = Path(run_dir)
    dirs = list_checkpoints(run_dir) + ([run_dir / "final"] if (run_dir / "final").is_dir() else [])
    if not dirs:
        raise CheckpointError(f"{run_dir} is not a run directory with checkpoints (no checkpoints/step-N/ or final/)")
    out = []
    for d in dirs:
        try:
            n, verified = check_checkpoint(d) if d.name != "final" else check_dir(d)
            out.append((d.name, None, f"{n} files, sizes and SHA-256 match the manifest" if verified else f"{n} files load; no manifest (older run)"))
        except IntegrityError as exc:
            out.append((d.name, str(exc), ""))
    return out


def _move_aside(ckpt: Path) -> None:
    target = ckpt.with_name(f"damaged-{ckpt.name}")
    shutil.rmtree(target, ignore_errors=True)
    ckpt.rename(target)


def restore_checkpoint(ckpt: Path, models, optimizer, scheduler, generators: dict[str, torch.Generator], rank: int = 0, world_size: int = 1,
                       load_sharded=None) -> dict:
    """Load weights, optimizer, scheduler and every RNG from `ckpt` into the live objects; returns
    the trainer state. torch.load runs with weights_only=True: no pickled objects are executed.
    `load_sharded(ckpt, optimizer_state)` (FSDP, DeepSpeed) puts weights and optimizer state into the
    sharded engine instead of loading them module by module."""
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    if len(rng["rank_generators"]) != world_size:
        raise CheckpointError(f"{ckpt} was written by {len(rng['rank_generators'])} process(es); resume it with the same number (this run has {world_size})")
    from safetensors.torch import load_model

    from policyshift.lora import is_peft, load_adapter
    from policyshift.models import load_causal_lm, load_sequence_classifier

    def restore(model, path: Path, load_full) -> None:  # the counterpart of save_models' save()
        if is_peft(model):  # LoRA: only the adapter was trained and saved; the base is the one already loaded
            load_adapter(model, path)
        else:
            model.load_state_dict(load_full(str(path)).state_dict())

    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
    if load_sharded is not None:
        load_sharded(ckpt, optim["optimizer"])
    else:
        restore(models.policy, ckpt / "policy", load_causal_lm)
        if models.critic is not None:
            restore(models.critic, ckpt / "critic", lambda p: load_sequence_classifier(p, kind="critic"))
        elif models.value_head is not None:
            load_model(models.value_head, str(ckpt / "critic" / "value_head.safetensors"))
        optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    set_rng_state(rng)
    for name, gen in generators.items():
        gen.set_state(rng["rank_generators"][rank][name])
    return json.loads((ckpt / "trainer_state.json").read_text())


def saved_weights(ckpt: Path, with_critic: bool, with_value_head: bool = True) -> dict[str, torch.Tensor]:
    """A checkpoint's weights as one PolicyAndCritic state dict (`policy.…`, `critic.…` or `value_head.…`, or
    the policy alone for a critic-free run)."""
    from safetensors.torch import load_file

    from policyshift.models import load_causal_lm, load_sequence_classifier

    full = {f"policy.{k}": v for k, v in load_causal_lm(str(ckpt / "policy")).state_dict().items()}
    if with_critic:
        full.update({f"critic.{k}": v for k, v in load_sequence_classifier(str(ckpt / "critic"), kind="critic").state_dict().items()})
    elif with_value_head:
        full.update({f"value_head.{k}": v for k, v in load_file(str(ckpt / "critic" / "value_head.safetensors")).items()})
    return full
