"""The sink protocol, the sink that fans one call out to several, and the sink that does nothing.

A sink has log_config, log_scalars, log_histograms, log_samples and close; log_findings and
log_artifact are optional (MultiSink calls them only on sinks that have them). A sink that raises
is reported once, on one line, and disabled: a tracking backend never stops training."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from policyshift.runfiles import IDS_FILE, clean_json  # noqa: F401 (defined in runfiles.py; old import path)


@runtime_checkable
class Sink(Protocol):
    def log_config(self, config: dict) -> None: ...

    def log_scalars(self, metrics: dict, step: int) -> None: ...

    def log_histograms(self, values: dict[str, list | None], step: int) -> None: ...

    def log_samples(self, rows: list[dict], step: int) -> None: ...

    def close(self) -> None: ...


def sink_name(sink: Any) -> str:
    return getattr(sink, "name", None) or type(sink).__name__


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[yellow]warning[/] {message}", highlight=False, markup=True)


def one_line(exc: BaseException) -> str:
    """"Type: first line of the message" (the type alone for an empty message)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class MultiSink:
    """Forwards every call to each sink. A sink whose call raises is named in one warning line and
    gets no further calls (close() is still attempted, to release what it holds)."""

    def __init__(self, sinks: list, warn: Callable[[str], None] = _warn):
        self.sinks = list(sinks)
        self.disabled: dict[str, str] = {}  # sink name -> the error that disabled it
        self._off: set[int] = set()  # id() of the disabled sinks
        self._warn = warn
        self._closed = False

    @property
    def names(self) -> list[str]:
        return [sink_name(s) for s in self.sinks]

    @property
    def active(self) -> list:
        return [s for s in self.sinks if id(s) not in self._off]

    def _call(self, method: str, *args, **kwargs) -> None:
        for sink in self.active:
            fn = getattr(sink, method, None)
            if fn is None:
                continue
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any backend failure: warn once, disable, train on
                self._disable(sink, method, exc)

    def _disable(self, sink, method: str, exc: BaseException) -> None:
        name = sink_name(sink)
        self._off.add(id(sink))
        self.disabled[name] = one_line(exc)
        self._warn(f"tracking: the {name} sink failed in {method} ({one_line(exc)}); it is disabled, training continues")

    def log_config(self, config: dict) -> None:
        self._call("log_config", config)

    def log_scalars(self, metrics: dict, step: int) -> None:
        self._call("log_scalars", metrics, step)

    def log_histograms(self, values: dict, step: int) -> None:
        self._call("log_histograms", values, step)

    def log_samples(self, rows: list[dict], step: int) -> None:
        self._call("log_samples", rows, step)

    def log_findings(self, findings: list[dict], step: int) -> None:
        self._call("log_findings", findings, step)

    def log_artifact(self, path: str | Path) -> None:
        self._call("log_artifact", path)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                if id(sink) not in self._off:
                    self._disable(sink, "close", exc)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullSink(MultiSink):
    """What a non-main process logs to: nothing (a MultiSink over no sinks)."""

    name = "null"

    def __init__(self):
        super().__init__([])


# ---- helpers the backends share ------------------------------------------------------------------
def as_number(value: Any) -> float | None:
    """A metric value as a float (bools and ints included); None for what is not a number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            out = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        return float(out) if isinstance(out, (int, float, bool)) else None
    return None


def finite_values(values: Any) -> list[float]:
    if values is None:
        return []
    out = []
    for v in values:
        x = as_number(v)
        if x is not None and math.isfinite(x):
            out.append(x)
    return out


SAMPLE_COLUMNS = ("model", "prompt_id", "prompt", "response", "score", "gold_score", "seq_kl", "length", "eos",
                  "ref_logprob_mean", "rep_ngram_rate")


def sample_columns(rows: list[dict]) -> list[str]:
    """The scalar columns of a samples table, in a fixed order (per-token lists left out)."""
    present = {k for r in rows for k in r}
    return [c for c in SAMPLE_COLUMNS if c in present]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_ids(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / IDS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_id(run_dir: Path, key: str, value: str) -> None:
    ids = read_ids(run_dir)
    ids[key] = value
    (run_dir / IDS_FILE).write_text(json.dumps(ids, indent=1) + "\n")
