"""`policyshift analyze RUN_DIR` with no other flag: the run's own records choose the reference, the logs and
the fixed prompts, one line each; a large prompt file is sampled to a bounded number of fixed prompts."""

import json

import pytest

from policyshift.analysis.runlog import load_run
from policyshift.analysis.zeroconf import MAX_PROMPTS, bounded, choose, reference_candidates
from policyshift.cli import main
from policyshift.errors import DataError


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory):
    pytest.importorskip("trl")
    from trl_run import run_grpo

    return run_grpo(tmp_path_factory.mktemp("trl_zero"))


def test_reference_from_an_adapters_recorded_base(tmp_path, tiny_world):
    run = tmp_path / "run" / "checkpoint-3"
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_world["policy"])}))
    chosen = choose([str(tmp_path / "run")], None, "prompts.jsonl", ["x"], str(tmp_path / "out"))
    assert chosen.reference == str(tiny_world["policy"]) and "adapter_config.json base_model_name_or_path" in chosen.lines[0]
    assert chosen.prompts == "prompts.jsonl" and chosen.logs == ["x"]  # given flags are kept


def test_nothing_recorded_names_the_flag(tmp_path):
    (tmp_path / "run").mkdir()
    assert reference_candidates([str(tmp_path / "run")]) == []
    with pytest.raises(DataError, match="pass --reference SFT_PATH"):
        choose([str(tmp_path / "run")], None, None, None, str(tmp_path / "out"))


def test_large_prompt_sets_are_bounded():
    rows = list(range(512))
    kept, line = bounded(rows)
    assert len(kept) == MAX_PROMPTS == 64 and kept == sorted(kept) and "64 of the file's 512" in line
    assert bounded(rows[:10]) == (rows[:10], None)


@pytest.mark.slow
def test_analyze_run_dir_imports_its_logs_and_prompts(trl_run, tmp_path, capsys):
    out = tmp_path / "zero"
    code = main(["analyze", str(trl_run["grpo"]), "--reference", str(trl_run["sft"]), "--max-new-tokens", "8", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "logs: imported from the run directory" in err and "training* prompts" in err
    run = load_run(out)
    assert any(key.startswith("trl/") for row in run.history for key in row)  # the logs, without --logs
    assert run.completions and run.config["analysis"]["num_prompts"] <= MAX_PROMPTS
