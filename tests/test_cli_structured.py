"""Every field whose value is a list or a mapping (a whole section, analysis.probes, model.lora.target_modules)
is settable from the command line and checked exactly as the same value in a YAML file: the same config, or
the same one-line error. The fields are enumerated from the config dataclasses, not listed by hand."""

import dataclasses
import json
import typing

import pytest
import yaml

from policyshift.config import ConfigError, PPOConfig, _is_list_type, _is_structured_type, build_dataclass, parse_overrides
from policyshift.stages.reward_model import RewardModelConfig
from policyshift.stages.sft import SFTConfig

ROOTS = (PPOConfig, SFTConfig, RewardModelConfig)


def structured_fields(cls, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, type) of every list or mapping field of `cls`, sections included, at every depth."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if _is_structured_type(tp) or _is_list_type(tp):
            out.append((key, tp))
        if dataclasses.is_dataclass(tp):
            out += structured_fields(tp, key + ".")
    return out


def item_type(tp):
    """list[X] / Optional[list[X]] / Optional[X] -> X."""
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is not list and inner and len(inner) == 1:
        tp = inner[0]
    return typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp


def candidate_values(tp) -> list:
    """Values to set the field to, valid and invalid, of every shape."""
    item = item_type(tp)
    if not dataclasses.is_dataclass(item):  # a list of scalars
        return [["a", "b"], ["a"], [1, 2], [], "a", [{"a": 1}], None]
    whole = json.loads(json.dumps(dataclasses.asdict(item())))  # every field at its default
    first = next(iter(whole))
    mappings = [whole, {first: whole[first]}, {"no_such_key": 1}, {first: [1, 2]}, {first: {"a": 1}}]
    if _is_list_type(tp):
        return [[m] for m in mappings] + [mappings[:2], "text", [], 7, ["text"], None]
    return mappings + ["text", 7, [whole], None]


def run_yaml(cls, key: str, value):
    nested: dict = {}
    node = nested
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    data = yaml.safe_load(yaml.safe_dump(nested))  # as read from a file
    if cls is PPOConfig:
        return PPOConfig.from_dict(data)
    return build_dataclass(cls, {**required(cls), **data}, "")


def run_cli(cls, key: str, value):
    flag = ["--" + key, json.dumps(value) if not isinstance(value, str) else value]
    over = parse_overrides(flag, cls)
    if cls is PPOConfig:
        return PPOConfig.from_dict({}, over)
    return build_dataclass(cls, {**required(cls), **over}, "")


def required(cls) -> dict:
    return {f.name: "x" for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def outcome(fn, *args):
    try:
        return "ok", dataclasses.asdict(fn(*args))
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return "error", str(exc)


CASES = [(cls, key, tp) for cls in ROOTS for key, tp in structured_fields(cls)]


def test_the_enumeration_finds_the_structured_fields():
    keys = {key for cls, key, _ in CASES if cls is PPOConfig}
    assert {"analysis.probes", "model", "model.lora", "model.lora.target_modules", "ppo", "tracking"} <= keys
    assert len(keys) >= 12  # every section of PPOConfig, its nested sections, its list fields


@pytest.mark.parametrize("cls,key,tp", CASES, ids=[f"{c.__name__}:{k}" for c, k, _ in CASES])
def test_cli_value_is_checked_exactly_like_yaml(cls, key, tp):
    values = candidate_values(tp)
    assert values
    for value in values:
        assert outcome(run_cli, cls, key, value) == outcome(run_yaml, cls, key, value), (key, value)


def test_probe_suites_from_the_command_line():
    suites = [{"name": "ifeval", "scorer": "instructions", "samples_per_prompt": 2}]
    for text in (json.dumps(suites), "[{name: ifeval, scorer: instructions, samples_per_prompt: 2}]"):
        cfg = PPOConfig.from_dict({}, parse_overrides(["--analysis.probes", text]))
        assert [(s.name, s.scorer, s.samples_per_prompt) for s in cfg.analysis.probes] == [("ifeval", "instructions", 2)]
    with pytest.raises(ConfigError, match=r"analysis.probes\[0\] \(x\): samples_per_prompt must be >= 1; got 0"):
        PPOConfig.from_dict({}, parse_overrides(["--analysis.probes=[{name: x, scorer: instructions, samples_per_prompt: 0}]"]))
    with pytest.raises(ConfigError, match=r"--analysis.probes: the value is not valid YAML or JSON"):
        parse_overrides(["--analysis.probes", "[{name: x"])
    # a whole section, merged over the file's like any other override
    cfg = PPOConfig.from_dict({"model": {"policy": "p", "lora": {"alpha": 8}}}, parse_overrides(["--model.lora", "{r: 4}"]))
    assert (cfg.model.policy, cfg.model.lora.r, cfg.model.lora.alpha) == ("p", 4, 8.0)


def test_train_command_reports_a_cli_probe_error_like_yaml(tmp_path, capsys):
    from policyshift.cli import main

    bad = "[{name: x, scorer: instructions, samples_per_prompt: 0}]"
    assert main(["train", "--analysis.probes", bad, "--train.output_dir", str(tmp_path / "a")]) == 2
    from_cli = capsys.readouterr().err.strip().splitlines()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"analysis": {"probes": yaml.safe_load(bad)}, "train": {"output_dir": str(tmp_path / "b")}}))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    from_yaml = capsys.readouterr().err.strip().splitlines()
    assert len(from_cli) == 1 and from_cli == from_yaml
    assert "samples_per_prompt must be >= 1" in from_cli[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
