"""The verl importer on files written by verl 0.9.1's own code (tests/fixtures/verl, made by
tests/fixtures/make_fixtures.py verl): file logger found by its lines, the saved config's mode, nulls
listed, validation dumps kept out of the training completions, V1 dumps' uid groups."""

import json
from pathlib import Path

import pytest

from policyshift import keys as K
from policyshift.analysis.ingest import import_logs
from policyshift.analysis.ingest.verl import is_dump, is_file_log, run_config

FIXTURES = Path(__file__).parent / "fixtures" / "verl"
HEALTHY, DIGITS = FIXTURES / "grpo_token_mean", FIXTURES / "20251202"


def lines(path: Path) -> dict[int, dict]:
    return {row["step"]: row["data"] for row in map(json.loads, path.read_text().splitlines())}


def test_file_log_and_dumps_told_by_their_lines():
    assert is_file_log(HEALTHY / "policyshift_fixtures" / "grpo_token_mean.jsonl")
    assert is_file_log(DIGITS / "policyshift_fixtures" / "20251202.jsonl")  # an all-digit experiment name
    assert is_dump(DIGITS / "policyshift_fixtures" / "1.jsonl") and not is_file_log(DIGITS / "policyshift_fixtures" / "1.jsonl")


def test_healthy_run_read_with_its_saved_config():
    result = import_logs([str(HEALTHY)])
    source = next(s for s in result.sources if s["kind"] == "verl scalars")
    assert source["mode"]["settings"]["loss_agg_mode"] == "token-mean" and source["mode"]["settings"]["use_kl_loss"] is True
    logged = lines(HEALTHY / "policyshift_fixtures" / "grpo_token_mean.jsonl")
    for step, data in logged.items():
        row = result.history[step]
        assert row[K.ENTROPY] == data["actor/entropy"]  # token-mean: per token
        assert row[K.SCORE_MEAN] == data["critic/score/mean"] and row[K.DUAL_CLIP_FRAC] == data["actor/pg_clipfrac_lower"]
        assert row[K.ENGINE_KL_K3] == data["rollout_corr/k3_kl"]
        assert row[K.EOS_RATE] == pytest.approx(1 - data["response_length/clip_ratio"])
        assert not any(key.startswith("kl/") for key in row)  # kl_loss and ppo_kl are not fed
    assert {"actor/ppo_kl", "actor/kl_loss", "training/rollout_probs_diff_mean"} <= set(source["shown"])
    assert "NOT KL to the reference" in source["meanings"]["actor/ppo_kl"] and "probabilities" in source["meanings"]["training/rollout_probs_diff_mean"]
    assert source["unknown"] == []
    # rollout dumps are training completions; the validation dump is not
    assert sorted({c["step"] for c in result.completions}) == [1, 2, 3, 4] and len(result.completions) == 4 * 32
    assert all(c["rewards"] == {"acc": c["score"]} for c in result.completions)  # the legacy dump's reward extra field
    assert any("validation dump" in n for n in result.notes)


def test_digit_named_run_without_config_shows_entropy_and_lists_nulls():
    result = import_logs([str(DIGITS)])
    source = next(s for s in result.sources if s["kind"] == "verl scalars")
    assert source["path"].endswith("20251202.jsonl") and source["mode"]["config"] is None
    assert "actor/entropy" in source["shown"] and all(K.ENTROPY not in row for row in result.history.values())
    assert source["not_numbers"]["critic/score/mean"] == {"kind": "null", "steps": [3]}  # NaN written as null by orjson
    assert K.SCORE_MEAN not in result.history[3] and K.SCORE_MEAN in result.history[2]
    groups = {c["group"] for c in result.completions if c["step"] == 1}
    assert len(groups) == 8 and all(sum(c["group"] == g for c in result.completions if c["step"] == 1) == 4 for g in groups)


def test_seq_sum_norm_entropy_is_not_fed(tmp_path):
    run = tmp_path / "run"
    (run / "proj").mkdir(parents=True)
    (run / "proj" / "exp.jsonl").write_text((HEALTHY / "policyshift_fixtures" / "grpo_token_mean.jsonl").read_text())
    config = (HEALTHY / "outputs" / "2026-12-02" / "06-00-00" / ".hydra" / "config.yaml").read_text()
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(config.replace("loss_agg_mode: token-mean", "loss_agg_mode: seq-mean-token-sum-norm", 1))
    assert run_config(run).get("actor_rollout_ref.actor.loss_agg_mode") == "seq-mean-token-sum-norm"
    result = import_logs([str(run)])
    source = result.sources[0]
    assert "actor/entropy" in source["shown"] and "max response length" in source["meanings"]["actor/entropy"]


def _hf(directory: Path, weights: bool = True) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    if weights:
        (directory / "model.safetensors").write_bytes(b"")
    return directory


def test_verl_checkpoint_layouts(tmp_path):
    """LoRA merger output (verl 0.9.1 model_merger/base_model_merger.py L394-419), Megatron dist_ckpt, and a
    huggingface/ folder with no weights (the default checkpoint.save_contents)."""
    from policyshift.analysis.discover import DiscoveryError, find_checkpoints

    lora = tmp_path / "lora"
    _hf(lora / "global_step_5" / "actor" / "huggingface")
    adapter = lora / "global_step_5" / "actor" / "huggingface" / "lora_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    [ckpt], _ = find_checkpoints(lora)
    assert ckpt.path == adapter and ckpt.step == 5 and "LoRA" in ckpt.layout  # the adapter, not the base beside it

    megatron = tmp_path / "megatron" / "global_step_2" / "actor"
    (megatron / "dist_ckpt").mkdir(parents=True)
    with pytest.raises(DiscoveryError, match="Megatron dist_ckpt.*--backend megatron"):
        find_checkpoints(tmp_path / "megatron")

    empty = tmp_path / "empty" / "global_step_3" / "actor"
    _hf(empty / "huggingface", weights=False)
    with pytest.raises(DiscoveryError, match="config and tokenizer only, no weights"):
        find_checkpoints(tmp_path / "empty")
