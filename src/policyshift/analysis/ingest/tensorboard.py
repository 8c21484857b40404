"""TensorBoard event files (events.out.tfevents.*), read with TensorBoard's own EventAccumulator. Which
trainer wrote them is recognized by the tags each importer declares (`tensorboard_tags`); events no
importer recognizes are imported as `tensorboard/<tag>`.
"""

from __future__ import annotations

from pathlib import Path

from policyshift.analysis.ingest.base import Importer, Imported, LogFormat, LogImportError

EVENTS = "events.out.tfevents."


def flavour(tags: list[str], importers) -> Importer:
    """The first importer (registry order) whose tags these are (compared without any importer's writer prefix)."""
    prefixes = tuple(sorted({i.tensorboard_strip for i in importers if i.tensorboard_strip}))
    keys = set()
    for tag in tags:
        prefix = next((p for p in prefixes if tag.startswith(p)), "")
        keys.add(tag[len(prefix):])
    return next(i for i in importers if i.tensorboard_tags is not None and i.tensorboard_tags(keys))


def read_tensorboard(directory: Path, imported: Imported, context: dict | None = None) -> None:
    """Scalars of every event file under `directory` (one EventAccumulator per run folder), read with
    TensorBoard's own reader. The trainer is recognized by its tags; its writer's prefix (train/) is
    stripped. Events of a trainer whose scalar log was already read from the same directory
    (`context["read"]`, e.g. TRL's trainer_state.json) are skipped: they repeat it in float32."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    skip = {name for name in (context or {}).get("read", ())}
    folders = sorted({p.parent for p in directory.rglob(EVENTS + "*")}) if directory.is_dir() else [directory]
    if not folders:
        raise LogImportError(f"{directory}: no TensorBoard event files ({EVENTS}*)")
    read = 0
    for folder in folders:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point, not a sample
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        if not tags:
            imported.notes.append(f"{folder}: TensorBoard events with no scalars; skipped")
            continue
        source = flavour(tags, list(imported.importers.values()))
        if source.name in skip and source.tensorboard_repeats_log:
            imported.notes.append(f"{folder}: TensorBoard events repeat the trainer_state.json log (float32); skipped")
            read += 1
            continue
        strip = source.tensorboard_strip
        by_step: dict[int, dict] = {}
        for tag in tags:
            key = tag[len(strip):] if strip and tag.startswith(strip) else tag
            for event in acc.Scalars(tag):
                by_step.setdefault(int(event.step), {})[key] = float(event.value)
        imported.add_scalars(source.name, folder, sorted(by_step.items()))
        read += 1
    if not read:
        raise LogImportError(f"{directory}: TensorBoard event files hold no scalars")


def _read_event_file(path: Path, imported: Imported, context: dict | None = None) -> None:
    read_tensorboard(path.parent, imported)


def _find_events(directory: Path, context: dict) -> list[Path]:
    return [directory] if any(directory.rglob(EVENTS + "*")) else []


def _read_found(path: Path, imported: Imported, context: dict | None = None) -> None:
    read_tensorboard(path, imported, context)


IMPORTER = Importer(
    name="tensorboard",
    title="TensorBoard",
    order=40,  # after every trainer whose tags it could be: events nobody claims are read as they are
    formats=(LogFormat(matches=lambda name: name.startswith(EVENTS), read=_read_event_file, file_phrase=f"a TensorBoard {EVENTS}* file",
                       find=_find_events, read_found=_read_found, dir_phrase="TensorBoard event files", help="TensorBoard event dirs"),),
    tensorboard_tags=lambda keys: True,
    other_trainer=False,
)
