"""The importers' registry (analysis.ingest): every list, message and lookup built from the importers'
declarations; the texts users and the docs rely on, as they read before the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyshift import keys as K
from policyshift.analysis import ingest
from policyshift.analysis.discover import EXPECTED, STEP_NAME, find_checkpoints
from policyshift.analysis.ingest import IMPORTERS, LogImportError, import_logs


def test_registry_order_names_and_key_tables():
    assert [i.name for i in IMPORTERS] == ["trl", "nemo_rl", "prime_rl", "verl", "openrlhf", "tensorboard", "hf", "policyshift"]
    assert ingest.SOURCES == ("trl", "nemo_rl", "prime_rl", "verl", "openrlhf", "tensorboard")
    assert ingest.RAW_PREFIXES == ("trl/", "nemo_rl/", "prime_rl/", "verl/", "openrlhf/", "tensorboard/")
    known = {getattr(K, name) for name in dir(K) if name.isupper() and isinstance(getattr(K, name), str)}
    for importer in IMPORTERS:
        assert len({m.key for m in importer.keys}) == len(importer.keys), importer.name  # one meaning per key
        for m in importer.keys:
            assert m.meaning, (importer.name, m.key)
            # a fed key is a policyshift key (the min/max variants of the score are written as reward/score_min|max)
            assert m.target is None or m.target in known or m.target in (K.SCORE + "_max", K.SCORE + "_min"), (importer.name, m.key)
    # the generic TensorBoard importer comes after every trainer whose tags it could be, and claims whatever is left
    tb = [i.name for i in IMPORTERS if i.tensorboard_tags is not None]
    assert tb[-1] == "tensorboard" and IMPORTERS[[i.name for i in IMPORTERS].index("tensorboard")].tensorboard_tags(set())


def test_lookup_by_table_and_pattern():
    assert ingest.lookup("trl", "kl").target is None  # the static table (mode unknown): GRPO's k3 or RLOO's k1
    from policyshift.analysis.ingest.trl import Mode, table_for

    assert table_for(Mode(trainer="GRPO"))("kl").target == K.KL_K3_TOKEN_MEAN
    assert table_for(Mode(trainer="RLOO"))("kl").target == K.KL_K1_TOKEN_MEAN
    assert ingest.lookup("verl", "response_length/clip_ratio").value(0.25) == 0.75
    found = ingest.lookup("trl", "rewards/good/mean")
    assert found.target is None and "one reward function" in found.meaning
    assert ingest.lookup("verl", "rewards/good/mean") is None and ingest.lookup("nobody", "kl") is None
    from policyshift.analysis.ingest_map import BY_KEY, lookup  # the old import path

    assert lookup("openrlhf", "ppo_clip_ratio").target == K.CLIP_FRAC and "kl" in BY_KEY["openrlhf"]


def test_generated_texts():
    assert ingest.DIR_EXPECTED == ("trainer_state.json or checkpoint-N/trainer_state.json, completions/completions_*.parquet, "
                                   "NeMo-RL train_data_step{N}.jsonl, prime-rl metrics.jsonl, prime-rl rollouts/step_N/train/effective/traces.jsonl, "
                                   "a verl file log (<project>/<experiment>.jsonl), {step}.jsonl rollout dumps, or TensorBoard event files")
    assert ingest.CHECKPOINT_TRAINERS == "TRL, prime-rl, verl, OpenRLHF, HF directories"
    assert ingest.COMPLETION_LOGS == ("TRL completions/completions_*.parquet, NeMo-RL train_data_step{N}.jsonl, "
                                     "prime-rl rollouts/step_N/train/effective/traces.jsonl, verl rollout dumps {step}.jsonl")
    assert EXPECTED == ("an HF model directory (config.json + model.safetensors/pytorch_model.bin, or a LoRA adapter_config.json), "
                        "or a run directory with checkpoint-N/ (HF Trainer, TRL), checkpoints/step_N/weight/ (prime-rl), global_step_N/actor/huggingface/ (verl), "
                        "global_stepN_hf/ (OpenRLHF) or checkpoints/step-N/policy/ (policyshift)")
    for name, step in [("checkpoint-12", 12), ("step-3", 3), ("global_step_40", 40), ("global_step7_hf", 7), ("global-step-2", 2),
                       ("iter_5", 5), ("iteration-9", 9), ("step_4", 4)]:
        assert STEP_NAME.match(name).group(1) == str(step), name
    for name in ("checkpoint", "final", "step-3_lora", "my_checkpoint-1"):
        assert STEP_NAME.match(name) is None, name


def test_unknown_file_and_empty_directory_name_every_format(tmp_path: Path):
    odd = tmp_path / "notes.txt"
    odd.write_text("x")
    with pytest.raises(LogImportError, match=r"unknown log file \(expected trainer_state.json, .*TensorBoard events.out.tfevents.\* file\)"):
        import_logs([str(odd)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogImportError, match="no log found"):
        import_logs([str(tmp_path / "empty")])


def test_checkpoint_layouts_labelled_by_their_importer(tmp_path: Path):
    for rel in ("checkpoint-2", "global_step_4/actor/huggingface", "global_step6_hf"):
        d = tmp_path / "run" / rel
        d.mkdir(parents=True)
        (d / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
        (d / "model.safetensors").write_bytes(b"")
    shards = tmp_path / "run" / "global_step_8" / "actor"
    shards.mkdir(parents=True)
    (shards / "model_world_size_2_rank_0.pt").write_bytes(b"")
    found, notes = find_checkpoints(tmp_path / "run")
    assert [(c.step, c.layout) for c in found] == [(2, "HF Trainer / TRL checkpoint"), (4, "verl HF export"), (6, "OpenRLHF HF checkpoint")]
    assert len(notes) == 1 and "verl FSDP shards" in notes[0] and "verl.model_merger merge" in notes[0]
