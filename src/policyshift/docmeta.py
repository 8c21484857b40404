"""What the code says about itself, as data, for the generated reference pages (docs/gen_reference.py) and the
test that every config field, metric key and CLI option is described (tests/test_docs.py).

The descriptions stay where a developer edits them: the comment beside (or the comment lines just above) a
config dataclass field, a metric key in keys.py or a detector threshold; the `help=` of an argparse option;
the registries of detectors and importers. Nothing here is a second copy of them: these functions read the
source (tokenize, ast) and the objects, so a renamed field or a new key shows up in the docs, and an
undescribed one fails the test.

Conventions read here:
- a comment line `# -- name: ... --` (or `# ---- name`) inside a class or module starts a group (the
  detector a threshold belongs to, the family of a metric key); it is not part of any description;
- a metric key's comment starts with its unit in brackets, `# [nats/token] ...`, and may end with
  `Healthy: ...` (what a healthy run shows);
- a paper or library a field follows is named in its comment as `Author et al. YYYY`, `Author YYYY` or a
  known library name; `follows()` picks those out for the reference's "follows" column.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from typing import Any, Optional

_GROUP = re.compile(r"^-{2,}\s*(.+?)\s*-*$")  # "-- kl_runaway: ... --" / "---- rewards"


@dataclass(frozen=True)
class FieldDoc:
    name: str
    type: str
    default: Any
    description: str
    group: str = ""  # the `# -- group --` header above it, if any


def _comments(source: str) -> dict[int, tuple[int, str]]:
    """line number (1-based) → (column, comment text without '#') for every comment token."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
    return out


def _described_lines(source: str) -> dict[int, tuple[str, str]]:
    """line → (description, group) for every line that holds code: the comment lines just above it (a block
    with no blank line between), then its trailing comment. Group headers are not descriptions."""
    lines = source.splitlines()
    comments = _comments(source)
    out, block, group = {}, [], ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        column, text = comments.get(number, (None, ""))
        if not stripped:
            block = []
            continue
        if column is not None and not line[:column].strip():  # a comment line
            header = _GROUP.match(text)
            if header:
                group, block = header.group(1), []
            else:
                block.append(text)
            continue
        trailing = text if column is not None else ""
        out[number] = (" ".join(block + ([trailing] if trailing else [])).strip(), group)
        block = []
    return out


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) if not isinstance(a, str) else a for a in args)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        inner = [a for a in args if a is not type(None)]
        return " | ".join(_type_name(a) for a in inner) + (" | null" if len(inner) < len(args) else "")
    if origin is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    return getattr(tp, "__name__", str(tp))


def dataclass_fields(cls) -> list[FieldDoc]:
    """The fields of dataclass `cls` with their types, defaults and source comments."""
    source = textwrap.dedent(inspect.getsource(cls))
    described = _described_lines(source)
    by_name = {}
    for number, line in enumerate(source.splitlines(), 1):
        m = re.match(r"\s+(\w+)\s*:", line)
        if m and number in described and m.group(1) not in by_name:
            by_name[m.group(1)] = described[number]
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        description, group = by_name.get(f.name, ("", ""))
        out.append(FieldDoc(f.name, _type_name(hints[f.name]), default, description, group))
    return out


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ConfigField:
    section: str  # "model", "model.lora", "analysis.probes[]"
    name: str
    type: str
    default: Any
    description: str


def config_fields(cls=None, section: str = "") -> list[ConfigField]:
    """Every leaf field of the training config (policyshift.config.PPOConfig), section by section; a list of
    dataclasses (analysis.probes) is documented as `section[]`."""
    if cls is None:
        from policyshift.config import PPOConfig as cls  # noqa: N813
    hints = typing.get_type_hints(cls)
    out = []
    for doc in dataclass_fields(cls):
        tp = hints[doc.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        listed = [typing.get_args(a)[0] for a in inner if typing.get_origin(a) is list and dataclasses.is_dataclass(typing.get_args(a)[0])]
        where = f"{section}.{doc.name}" if section else doc.name
        if dataclasses.is_dataclass(tp):
            out += config_fields(tp, where)
        elif listed:
            out.append(ConfigField(section, doc.name, doc.type, doc.default, doc.description))
            out += config_fields(listed[0], where + "[]")
        else:
            out.append(ConfigField(section, doc.name, doc.type, doc.default, doc.description))
    return out


def stage_configs() -> dict[str, type]:
    """The flat configs of the stage commands (`policyshift sft`, `policyshift reward-model`)."""
    from policyshift.stages.reward_model import RewardModelConfig
    from policyshift.stages.sft import SFTConfig

    return {"sft": SFTConfig, "reward-model": RewardModelConfig}


_CITATION = re.compile(r"\b(?:[A-Z][a-z]+(?: et al\.?| & [A-Z][a-z]+)? (?:19|20)\d\d)\b")
# the libraries and named methods whose defaults or objectives config fields follow (a field that merely works with
# vLLM or W&B does not "follow" it)
LIBRARIES = ("TRL", "verl", "OpenRLHF", "DeepSpeed-Chat", "DAPO", "GSPO", "Dr. GRPO", "peft", "accelerate")


def follows(description: str) -> str:
    """The papers (Author et al. YYYY) and libraries a description names, in order, for a "follows" column."""
    found = [m.group(0) for m in _CITATION.finditer(description)]
    found += [lib for lib in LIBRARIES if re.search(rf"(?<![\w/]){re.escape(lib)}(?![\w])", description)]
    return ", ".join(dict.fromkeys(found))


# ---------------------------------------------------------------------------------------------- metric keys


@dataclass(frozen=True)
class MetricKey:
    constant: str  # the name in policyshift.keys
    key: str  # as written to metrics.jsonl (a prefix ends in "/" or names its suffixes in the description)
    unit: str
    meaning: str
    healthy: str
    group: str


_UNIT = re.compile(r"^\[([^\]]*)\]\s*")


def metric_keys() -> list[MetricKey]:
    """Every key constant of policyshift.keys, with the unit, meaning and healthy range its comment gives."""
    from policyshift import keys

    source = inspect.getsource(keys)
    described = _described_lines(source)
    out = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        names = [target] if isinstance(target, ast.Name) else list(getattr(target, "elts", []))
        values = [value] if isinstance(value, ast.Constant) else list(getattr(value, "elts", []))
        if len(names) != len(values) or not all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in values):
            continue
        text, group = described.get(node.lineno, ("", ""))
        m = _UNIT.match(text)
        unit, text = (m.group(1), text[m.end():]) if m else ("", text)
        meaning, _, healthy = text.partition("Healthy:")
        for n, v in zip(names, values):
            out.append(MetricKey(n.id, v.value, unit.strip(), meaning.strip().rstrip(";").strip(), healthy.strip(), group))
    return out


# ---------------------------------------------------------------------------------------------- CLI


@dataclass(frozen=True)
class CliOption:
    flags: str  # "--max-new-tokens" or "PATH"
    metavar: str
    default: Any
    choices: Optional[tuple]
    required: bool
    help: str


@dataclass(frozen=True)
class CliCommand:
    name: str
    help: str
    description: str
    options: list[CliOption]


def cli_commands(parser=None) -> tuple[str, list[CliCommand]]:
    """The top-level description and every subcommand of `policyshift` with its options, from the argparse
    parser the CLI itself uses (policyshift.cli.build_parser)."""
    import argparse

    if parser is None:
        from policyshift.cli import build_parser

        parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    commands = []
    for name, p in sub.choices.items():
        options = []
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            flags = ", ".join(a.option_strings) if a.option_strings else (a.metavar or a.dest)
            default = None if a.default in (None, argparse.SUPPRESS) or isinstance(a, argparse._StoreTrueAction) else a.default
            metavar = a.metavar or ("" if a.nargs == 0 else (a.dest.upper() if a.option_strings else ""))
            if a.nargs in ("+", "*") and metavar:
                metavar += " ..."
            options.append(CliOption(flags, str(metavar), default, tuple(a.choices) if a.choices else None,
                                     bool(a.required) if a.option_strings else True, a.help or ""))
        commands.append(CliCommand(name, helps.get(name) or "", p.description or "", options))
    return parser.description or "", commands


# ---------------------------------------------------------------------------------------------- detectors


@dataclass(frozen=True)
class DetectorDoc:
    name: str
    summary: str  # the detect function's docstring or leading comment
    thresholds: list[FieldDoc]  # the thresholds of its `# -- name --` group
    advice: object = None  # its family's ADVICE[name] (analysis.findings.Advice): detects, healthy, broken, action; None when undeclared


def _threshold_classes() -> list[type]:
    """The dataclasses that hold detector thresholds: one DetectorThresholds class, or (the detector-family
    registry) common.Thresholds and each family's Thresholds."""
    from policyshift.analysis import detectors

    families = getattr(detectors, "FAMILIES", None)
    if families:
        from policyshift.analysis.detectors import common

        return [common.Thresholds] + [m.Thresholds for m in families]
    return [detectors.DetectorThresholds]


def detector_thresholds() -> list[FieldDoc]:
    """Every detector threshold (name, type, default, comment, group), in registry order."""
    out = []
    for cls in _threshold_classes():
        for doc in dataclass_fields(cls):
            out.append(doc if doc.group else dataclasses.replace(doc, group="shared"))
    return out


def _leading_comment(fn) -> str:
    """The comment lines that open a function's body (the detectors explain themselves there)."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return ""
    lines = source.splitlines()
    start = next((i for i, line in enumerate(lines) if line.rstrip().endswith(":") and not line.startswith((" ", "\t", "@"))), 0) + 1
    block = []
    for line in lines[start:]:
        s = line.strip()
        if s.startswith("#"):
            block.append(s.lstrip("#").strip())
        elif s.startswith(('"""', "'''")) or not s:
            continue
        else:
            break
    return " ".join(block)


def detectors() -> list[DetectorDoc]:
    """Every registered detector (policyshift.analysis.detectors.DETECTORS) with its thresholds and advice."""
    from policyshift.analysis.detectors import DETECTORS
    from policyshift.analysis import detectors as registry

    advice = getattr(registry, "ADVICE", {})

    thresholds = detector_thresholds()
    out = []
    for name, fn in DETECTORS.items():
        summary = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ") or _leading_comment(fn)
        mine = [t for t in thresholds if re.match(rf"{re.escape(name)}\b", t.group)]
        headers = [t.group.partition(":")[2].strip() for t in mine[:1] if ":" in t.group]
        parts = [p.rstrip(". ") for p in [*headers, summary] if p]
        out.append(DetectorDoc(name, ". ".join(parts) + ("." if parts else ""), mine, advice.get(name)))
    return out


# ---------------------------------------------------------------------------------------------- importers


@dataclass(frozen=True)
class ImporterDoc:
    name: str  # metrics.jsonl prefix of its keys as logged
    title: str
    formats: list[str]  # what it reads (log formats), where the registry says
    checkpoints: list[str]  # checkpoint layouts it recognizes, where the registry says
    keys: list  # KeyMap rows: key, target (policyshift key or None), meaning
    scalars: bool = True  # writes `<name>/<key>` scalar rows (False: checkpoints only)


def importers() -> list[ImporterDoc]:
    """Every importer of other trainers' logs with the keys it maps: from the IMPORTERS registry
    (policyshift.analysis.ingest) when there is one, else from the key tables of analysis.ingest_map."""
    try:
        from policyshift.analysis.ingest import IMPORTERS  # the importer registry
    except ImportError:
        IMPORTERS = None  # noqa: N806
    if IMPORTERS:
        return [ImporterDoc(i.name, i.title, [f.help for f in i.formats if f.help],
                            [c.expected or c.label for c in i.checkpoints], list(i.keys), getattr(i, "scalars", True)) for i in IMPORTERS]
    from policyshift.analysis.ingest_map import SOURCES, TABLES

    titles = {"trl": "TRL (and the HF Trainer)", "verl": "verl", "openrlhf": "OpenRLHF", "tensorboard": "TensorBoard (any trainer)"}
    return [ImporterDoc(s, titles.get(s, s), [], [], list(TABLES.get(s, []))) for s in SOURCES]
