"""The NeMo-RL importer on train_data_step{N}.jsonl dumps written in the format NeMo-RL v0.7.0's source writes
(tests/fixtures/transcribed.py cites the lines): completions, rewards, and the training–inference mismatch
measured offline from generation_logprobs vs prev_logprobs."""

import json
import math
from pathlib import Path

import pytest

from policyshift import keys as K
from policyshift.analysis.ingest import LogImportError, import_logs

FIXTURES = Path(__file__).parent / "fixtures" / "nemo_rl"


def test_mismatch_measured_from_the_logged_logprobs():
    result = import_logs([str(FIXTURES / "mismatch")])
    assert sorted(result.history) == [1, 2, 3]
    rows = [json.loads(line) for line in (FIXTURES / "mismatch" / "logs" / "exp_001" / "train_data_step1.jsonl").read_text().splitlines()]
    pairs = [(g, p) for r in rows for g, p, m in list(zip(r["generation_logprobs"][0], r["prev_logprobs"][0], r["token_loss_mask"][0]))[1:] if m]
    expected = sum(math.exp(p - g) - (p - g) - 1 for g, p in pairs) / len(pairs)
    assert result.history[1][K.ENGINE_KL_K3] == pytest.approx(expected)
    assert result.history[1][K.ENGINE_LOGPROB_DIFF_MEAN] == pytest.approx(sum(abs(g - p) for g, p in pairs) / len(pairs))
    assert result.history[1]["nemo_rl/token_mult_prob_error"] > 1.05  # NeMo-RL's own flag
    healthy = import_logs([str(FIXTURES / "healthy")])
    assert all(row[K.ENGINE_KL_K3] < 1e-4 and row["nemo_rl/token_mult_prob_error"] < 1.01 for row in healthy.history.values())


def test_completions_and_rewards():
    result = import_logs([str(FIXTURES / "healthy")])
    assert len(result.completions) == 24 and {c["step"] for c in result.completions} == {1, 2, 3}
    first = result.completions[0]
    assert first["prompt"] == "on a dog runs" and first["completion"] == "bad a cat a sits on" and first["score"] == 1.0
    assert result.history[1][K.SCORE_MEAN] == pytest.approx(sum(c["score"] for c in result.completions if c["step"] == 1) / 8)


def test_a_foreign_line_is_one_error(tmp_path):
    bad = tmp_path / "train_data_step1.jsonl"
    bad.write_text(json.dumps({"content": ["x"]}) + "\n")
    with pytest.raises(LogImportError, match="generation_logprobs"):
        import_logs([str(bad)])
