"""Config: literature defaults, YAML round trip, typed dotted overrides, and one-line ConfigErrors
for every kind of bad input (a fuzz test checks that nothing else escapes)."""

import dataclasses
import math
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyshift.config import ConfigError, PPOConfig, build_dataclass, load_yaml, parse_overrides


def build(data=None, argv=()):
    return PPOConfig.from_dict(data or {}, parse_overrides(list(argv)))


def error_of(data=None, argv=()) -> str:
    with pytest.raises(ConfigError) as info:
        build(data, argv)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- defaults ---------------------------------------------------------------------------------------


def test_defaults_follow_the_literature():
    c = PPOConfig()
    assert c.ppo.clip_range == 0.2
    assert c.ppo.clip_range_value == 0.2
    assert c.ppo.vf_coef == 0.1
    assert c.ppo.gamma == 1.0
    assert c.ppo.lam == 0.95
    assert c.ppo.epochs == 4
    assert c.kl.estimator == "k1"
    assert c.kl.beta == 0.05
    assert c.kl.controller == "fixed"
    assert c.kl.placement == "reward"
    assert c.rollout.temperature == 1.0
    assert c.ppo.whiten_advantages is True


def test_empty_dict_and_empty_yaml_give_the_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert PPOConfig.from_dict({}) == PPOConfig()
    assert PPOConfig.from_yaml(tmp_path / "empty.yaml") == PPOConfig()


def test_a_section_left_empty_in_yaml_keeps_its_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("ppo:\n  # clip_range: 0.1\nkl:\n  beta: 0.1\n")
    c = PPOConfig.from_yaml(tmp_path / "c.yaml")
    assert c.ppo == PPOConfig().ppo and c.kl.beta == 0.1


# ---- YAML -------------------------------------------------------------------------------------------


def test_yaml_round_trip(tmp_path):
    c = build(argv=["--model.policy", "runs/sft", "--ppo.clip_range", "0.1", "--ppo.lr", "3e-6", "--reward.clip", "5",
                    "--kl.controller", "adaptive", "--data.prompt_field", "yes", "--train.output_dir", "0100",
                    "--ppo.max_grad_norm", "null", "--rollout.stop_at_eos", "false"])
    c.save_yaml(tmp_path / "c.yaml")
    again = PPOConfig.from_yaml(tmp_path / "c.yaml")
    assert again == c
    assert again.to_dict() == c.to_dict()


def test_yaml_values_are_coerced_to_field_types(tmp_path):
    (tmp_path / "c.yaml").write_text("ppo:\n  lr: 1e-5\n  epochs: 2.0\nreward:\n  clip: 3\n")
    c = PPOConfig.from_yaml(tmp_path / "c.yaml")
    assert c.ppo.lr == 1e-5 and type(c.ppo.lr) is float  # PyYAML reads "1e-5" (no dot) as a string
    assert c.ppo.epochs == 2 and type(c.ppo.epochs) is int
    assert c.reward.clip == 3.0 and type(c.reward.clip) is float


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_yaml("/nonexistent/nope.yaml")


def test_malformed_yaml_names_its_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ppo:\n  clip_range: 0.1\n  lam: [0.9\nkl:\n  beta: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    message = str(info.value)
    assert "not valid YAML" in message and "line 4" in message and str(path) in message
    assert "\n" not in message


def test_yaml_that_is_a_list_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- ppo\n- kl\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, got list"):
        load_yaml(path)


def test_yaml_with_a_bom_and_a_binary_file(tmp_path):
    (tmp_path / "bom.yaml").write_bytes("\ufeffkl:\n  beta: 0.2\n".encode("utf-8"))
    assert PPOConfig.from_yaml(tmp_path / "bom.yaml").kl.beta == 0.2
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_yaml(tmp_path / "bin.yaml")


def test_from_dict_refuses_a_non_mapping():
    with pytest.raises(ConfigError, match="config must be a mapping of sections, got list"):
        PPOConfig.from_dict([1, 2])


# ---- overrides ---------------------------------------------------------------------------------------


def test_overrides_beat_yaml_and_are_typed(tmp_path):
    (tmp_path / "c.yaml").write_text("ppo:\n  clip_range: 0.3\n  epochs: 2\nkl:\n  controller: fixed\nreward:\n  clip: 4.0\n")
    c = PPOConfig.from_yaml(tmp_path / "c.yaml", parse_overrides(
        ["--ppo.clip_range", "0.1", "--kl.controller", "adaptive", "--reward.clip", "null", "--kl.beta=0.2"]))
    assert c.ppo.clip_range == 0.1 and type(c.ppo.clip_range) is float
    assert c.ppo.epochs == 2  # untouched YAML values survive
    assert c.kl.controller == "adaptive"
    assert c.reward.clip is None
    assert c.kl.beta == 0.2


def test_parse_overrides_forms():
    assert parse_overrides(["--ppo.clip_range", "0.1", "--kl.beta=0.1", "--reward.clip", "null", "--ppo.whiten_advantages", "false",
                            "--ppo.epochs", "3"]) == {
        "ppo.clip_range": 0.1, "kl.beta": 0.1, "reward.clip": None, "ppo.whiten_advantages": False, "ppo.epochs": 3}
    assert parse_overrides(["--model.policy=a=b"]) == {"model.policy": "a=b"}  # only the first '=' splits
    assert parse_overrides(["--reward.missing_eos_penalty", "-1.5"]) == {"reward.missing_eos_penalty": -1.5}


def test_string_fields_keep_the_text_as_typed():
    # YAML 1.1 would read these as 64, True and 90.
    c = build(argv=["--train.output_dir", "0100", "--data.prompt_field", "yes", "--data.split", "1:30"])
    assert c.train.output_dir == "0100" and c.data.prompt_field == "yes" and c.data.split == "1:30"
    assert build(argv=["--model.reference", "null"]).model.reference is None  # Optional[str] still takes null


def test_bad_override_syntax():
    assert "needs a value" in error_of(argv=["--ppo.clip_range"])
    assert "unexpected argument 'stray'" in error_of(argv=["stray"])
    assert "'ppo' is a value, not a section" in error_of(argv=["--ppo", "3", "--ppo.clip_range", "0.1"])
    assert "ppo must be a mapping, got int" in error_of(argv=["--ppo", "3"])


# ---- unknown keys ------------------------------------------------------------------------------------


def test_unknown_key_suggests_the_nearest_valid_key():
    assert error_of(argv=["--ppo.clip_rnage", "0.1"]) == "unknown config key 'ppo.clip_rnage'; did you mean 'ppo.clip_range'?"
    assert error_of({"ppo": {"clip_rnage": 0.1}}) == "unknown config key 'ppo.clip_rnage'; did you mean 'ppo.clip_range'?"


def test_unknown_section_suggests_the_nearest_section():
    assert error_of(argv=["--ppoo.clip_range", "0.1"]) == "unknown config key 'ppoo'; did you mean 'ppo'?"
    assert "valid keys: model, data, rollout, reward, kl, algorithm, ppo, analysis, train" in error_of({"zzzz": {}})


def test_a_key_in_the_wrong_section_points_to_its_home():
    assert error_of(argv=["--ppo.beta", "0.1"]).endswith("did you mean 'kl.beta'?")
    assert error_of({"clip_range": 0.1}).endswith("did you mean 'ppo.clip_range'?")


def test_other_configs_built_with_build_dataclass_get_only_their_own_keys():
    @dataclasses.dataclass
    class StageConfig:
        lr: float = 1e-4
        steps: int = 10

    assert build_dataclass(StageConfig, {"steps": "3"}, "") == StageConfig(steps=3)
    with pytest.raises(ConfigError, match=r"^unknown config key 'seed'; valid keys: lr, steps$"):
        build_dataclass(StageConfig, {"seed": 1}, "")


# ---- invalid values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["--kl.beta", "-0.1"], "kl.beta must be >= 0; got -0.1"),
    (["--ppo.clip_range", "0"], "ppo.clip_range must be > 0; got 0.0"),
    (["--ppo.clip_range", "-0.2"], "ppo.clip_range must be > 0; got -0.2"),
    (["--ppo.clip_range_value", "0"], "ppo.clip_range_value must be > 0; got 0.0"),
    (["--ppo.epochs", "abc"], "ppo.epochs must be an integer; got 'abc'"),
    (["--ppo.epochs", "2.5"], "ppo.epochs must be an integer; got 2.5"),
    (["--ppo.epochs", "true"], "ppo.epochs must be an integer; got True"),
    (["--ppo.lr", "fast"], "ppo.lr must be a number; got 'fast'"),
    (["--ppo.lr", "nan"], "ppo.lr must be a number; got 'nan'"),
    (["--ppo.lr", ".inf"], "ppo.lr must be > 0; got inf"),
    (["--reward.missing_eos_penalty", ".nan"], "reward.missing_eos_penalty must be a number; got nan"),
    (["--kl.estimator", "k4"], "kl.estimator must be one of k1, k2, k3; got 'k4'"),
    (["--kl.controller", "pid"], "kl.controller must be one of fixed, adaptive; got 'pid'"),
    (["--model.dtype", "fp16"], "model.dtype must be one of float32, bfloat16, float16; got 'fp16'"),
    (["--data.shuffle", "maybe"], "data.shuffle must be true or false; got 'maybe'"),
    (["--ppo.gamma", "1.5"], "ppo.gamma must be in [0, 1]"),
    (["--rollout.temperature", "0"], "rollout.temperature must be > 0"),
    (["--reward.clip", "0"], "reward.clip must be > 0 or null"),
    (["--ppo.adam_eps", "-1"], "ppo.adam_eps must be > 0; got -1.0"),
    (["--train.steps", "0"], "train.steps must be >= 1"),
])
def test_invalid_values_give_one_line_errors(argv, expected):
    assert error_of(argv=argv) == expected


def test_batch_must_divide_into_minibatches_and_micro_batches():
    message = error_of(argv=["--rollout.batch_size", "16", "--ppo.num_minibatches", "3"])
    assert message.startswith("rollout.batch_size (16) must be divisible by ppo.num_minibatches × ppo.grad_accum_steps (3 × 1)")
    assert "(2 × 3)" in error_of(argv=["--rollout.batch_size", "8", "--ppo.num_minibatches", "2", "--ppo.grad_accum_steps", "3"])
    c = build(argv=["--rollout.batch_size", "12", "--ppo.num_minibatches", "2", "--ppo.grad_accum_steps", "3"])
    assert (c.rollout.batch_size, c.ppo.num_minibatches, c.ppo.grad_accum_steps) == (12, 2, 3)


def test_integers_stay_exact_and_huge_numbers_are_config_errors():
    assert build({"train": {"seed": "12345678901234567891"}}).train.seed == 12345678901234567891
    assert build({"ppo": {"epochs": "1e1"}}).ppo.epochs == 10
    assert error_of({"ppo": {"clip_range": 10**400}}).startswith("ppo.clip_range must be a number")
    assert error_of({"ppo": {"epochs": "1e400"}}).startswith("ppo.epochs must be an integer")


def test_error_messages_stay_on_one_line():
    assert error_of({"ppo\nx": 1}) == "unknown config key 'ppo x'; did you mean 'ppo'?"
    assert "\n" not in error_of({"ppo": {"epochs": "a\nb"}})


def test_config_is_validated_on_construction_and_replace():
    with pytest.raises(ConfigError, match="kl.beta must be >= 0"):
        dataclasses.replace(PPOConfig(), kl=dataclasses.replace(PPOConfig().kl, beta=-1.0))


# ---- fuzz --------------------------------------------------------------------------------------------

SECTIONS = [f.name for f in dataclasses.fields(PPOConfig)]
DOTTED = [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(PPOConfig(), s))]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["null", "true", "0.1", "-1", "1e400", "k2", "adaptive", "nan", ".inf", "0100", "1:30", "~"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=5)
keys = st.sampled_from(DOTTED) | st.sampled_from(SECTIONS) | st.text(max_size=8)  # mostly real keys, some noise


def nest(pairs):
    """[("ppo.lr", v), ...] -> {"ppo": {"lr": v}}; a clash keeps whichever came last."""
    out = {}
    for key, value in pairs:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return out


configs = st.lists(st.tuples(keys, values), max_size=6).map(nest)
argv_lists = st.lists(st.one_of(keys.map(lambda k: f"--{k}"), st.sampled_from(["--", "--=", "-x", "--ppo.lr=1e-5"]),
                                st.text(max_size=8), scalars.map(str)), max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=configs, argv=argv_lists)
def test_arbitrary_input_gives_a_config_or_a_config_error(data, argv):
    try:
        config = PPOConfig.from_dict(data, parse_overrides(argv))
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(config, PPOConfig)
    for section in dataclasses.fields(config):
        part = getattr(config, section.name)
        for name, tp in typing.get_type_hints(type(part)).items():
            value = getattr(part, name)
            assert has_type(value, tp), f"{section.name}.{name} = {value!r} is not a {tp}"
            assert not (isinstance(value, float) and math.isnan(value)), f"{section.name}.{name} is NaN"


def has_type(value, tp) -> bool:
    """Exactly the annotated type: an int field holds an int (not a bool), a float field a float."""
    if typing.get_origin(tp) is typing.Literal:
        return value in typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union:
        return any(has_type(value, a) for a in typing.get_args(tp))
    return type(value) is tp


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60))
def test_arbitrary_yaml_text_gives_a_config_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        PPOConfig.from_yaml(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_yaml_dump_is_plain_and_reloadable(tmp_path):
    PPOConfig().save_yaml(tmp_path / "c.yaml")
    assert set(yaml.safe_load((tmp_path / "c.yaml").read_text())) == set(SECTIONS)


# ---- stage commands: overrides typed by the stage's config, not PPOConfig -------------------------
def test_stage_overrides_keep_string_fields_as_typed():
    from policyshift.stages.reward_model import RewardModelConfig
    from policyshift.stages.sft import SFTConfig

    sft = parse_overrides(["--output_dir", "0100", "--model", "yes", "--data=0x10", "--steps", "5", "--device", "null"],
                          SFTConfig)
    assert sft == {"output_dir": "0100", "model": "yes", "data": "0x10", "steps": 5, "device": "null"}
    rm = parse_overrides(["--output_dir", "0100", "--base_model", "on", "--pairs", "007", "--steps", "3"], RewardModelConfig)
    assert rm == {"output_dir": "0100", "base_model": "on", "pairs": "007", "steps": 3}
    # the PPO parse is unchanged: its own string fields keep their text, the rest is YAML
    assert parse_overrides(["--train.output_dir", "0100", "--train.steps", "0100"]) == {"train.output_dir": "0100", "train.steps": 64}


def test_sft_command_config_writes_to_the_directory_as_typed():
    import argparse

    from policyshift.cli import _stage_config
    from policyshift.stages.sft import SFTConfig

    cfg = _stage_config(SFTConfig, argparse.Namespace(config=None), ["--data", "t.jsonl", "--output_dir", "0100", "--model", "null",
                                                                      "--steps", "7"])
    assert (cfg.output_dir, cfg.model, cfg.steps, cfg.data) == ("0100", None, 7, "t.jsonl")
