"""Tracking backends, read back with each library's own reader: TensorBoard event files through
EventAccumulator, the offline W&B run's .wandb record log through wandb's protobuf records, MLflow
through MlflowClient. A sink that raises is disabled after one warning and the others go on; a
non-main process logs nothing; a backend that is on but not installed fails before training."""

from __future__ import annotations

import glob
import json
import struct
import time
from pathlib import Path

import pytest

from policyshift import PPOConfig
from policyshift.tracking import JsonlSink, MultiSink, NullSink, TrackingError, make_sinks

STEPS = (1, 2, 3)
EVAL_STEPS = (0, 3)


def tracking_config(tmp_path, **tracking):
    return PPOConfig.from_dict({"tracking": {"tensorboard": False, **tracking}, "train": {"output_dir": str(tmp_path)}})


def metrics(step):
    return {"kl/token_mean": 0.1 * step, "reward/score_mean": 1.0 + step, "episodes": 8 * step, "optim/skipped_updates": 0,
            "value/explained_variance": float("nan"), "not/a_number": None}


def histograms(step):
    return {"scores": [0.1 * step, 0.5, 0.9], "seq_kl": [0.0, 0.2 * step, float("nan")], "lengths": [3, 4, 6], "gold_scores": None}


def sample_rows(step):
    model = "reference" if step == 0 else "policy"
    return [{"prompt_id": i, "prompt": f"prompt | {i}\nline two", "response": f"resp {i} at {step}", "score": 0.5 + i, "gold_score": None,
             "seq_kl": 0.1 * step, "length": 4, "eos": True, "ref_logprob_mean": -2.0, "rep_ngram_rate": 0.0, "model": model,
             "tokens": ["a", "b"], "token_log_ratio": [0.0, 0.1]} for i in range(2)]


def drive(sink, config_dict=None):
    """What the trainer does: config once, samples at step 0 (the reference), scalars and
    histograms every step, samples at each eval step, a finding, close."""
    sink.log_config(config_dict or {"ppo": {"lr": 1e-5}, "train": {"steps": 3}})
    sink.log_samples(sample_rows(0), 0)
    for step in STEPS:
        sink.log_scalars(metrics(step), step)
        sink.log_histograms(histograms(step), step)
        if step in EVAL_STEPS:
            sink.log_samples(sample_rows(step), step)
    sink.log_findings([{"detector": "kl_spike", "severity": "warning", "step": 3, "message": "KL jumped"}], 3)
    sink.close()


# ---- MultiSink: the failure policy ----------------------------------------------------------------
class Recorder:
    def __init__(self, name="recorder"):
        self.name, self.calls = name, []

    def log_config(self, config):
        self.calls.append(("config",))

    def log_scalars(self, metrics, step):
        self.calls.append(("scalars", step))

    def log_histograms(self, values, step):
        self.calls.append(("histograms", step))

    def log_samples(self, rows, step):
        self.calls.append(("samples", step))

    def close(self):
        self.calls.append(("close",))


class Broken(Recorder):
    def log_scalars(self, metrics, step):
        raise RuntimeError("backend down\nsecond line of the traceback text")


class WithFindings(Recorder):
    def log_findings(self, findings, step):
        self.calls.append(("findings", step))


def test_failing_sink_is_disabled_after_one_warning_and_the_others_get_everything():
    warnings = []
    good, broken, findings = Recorder("good"), Broken("flaky"), WithFindings("with_findings")
    sink = MultiSink([good, broken, findings], warn=warnings.append)
    drive(sink)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "flaky" in warnings[0] and "log_scalars" in warnings[0] and "backend down" in warnings[0]
    assert sink.disabled == {"flaky": "RuntimeError: backend down"}
    expected = [("config",), ("samples", 0), *[c for s in STEPS for c in [("scalars", s), ("histograms", s)] + ([("samples", s)] if s in EVAL_STEPS else [])]]
    assert good.calls == expected + [("close",)]
    assert findings.calls == expected + [("findings", 3), ("close",)]  # log_findings only where a sink has it
    assert broken.calls == [("config",), ("samples", 0), ("close",)]  # nothing after the failure; close still tried
    sink.log_artifact("report.html")  # no sink has it: nothing happens


def test_failure_warning_goes_to_stderr_on_one_line(capsys):
    sink = MultiSink([Broken("flaky")])
    sink.log_scalars({"a": 1.0}, 1)
    sink.log_scalars({"a": 1.0}, 2)
    err = capsys.readouterr().err
    assert err.count("flaky") == 1 and len(err.strip().splitlines()) == 1


def test_non_main_process_logs_nothing(tmp_path):
    sink = make_sinks(tmp_path / "run", tracking_config(tmp_path, tensorboard=True), is_main_process=False)
    assert isinstance(sink, NullSink)
    drive(sink)
    assert not (tmp_path / "run").exists()


def test_jsonl_always_and_backends_as_configured(tmp_path):
    sink = make_sinks(tmp_path, tracking_config(tmp_path))
    assert isinstance(sink, MultiSink) and [type(s) for s in sink.sinks] == [JsonlSink]
    sink.close()
    sink = make_sinks(tmp_path, tracking_config(tmp_path, tensorboard=True))
    assert sink.names == ["jsonl", "tensorboard"]
    sink.close()


@pytest.mark.parametrize("backend", ["wandb", "mlflow"])
def test_backend_on_but_not_installed_is_a_clear_error(tmp_path, monkeypatch, backend):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == backend else real(name, *a))
    with pytest.raises(TrackingError) as info:
        make_sinks(tmp_path, tracking_config(tmp_path, **{backend: True}))
    message = str(info.value)
    assert f"pip install 'policyshift[{backend}]'" in message and "\n" not in message
    assert not (tmp_path / "metrics.jsonl").exists()


def test_backend_that_cannot_start_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import policyshift.tracking.wandb as wandb_sink

    def refuse(self, *args, **kwargs):
        raise RuntimeError("No API key configured.\nmore text")

    monkeypatch.setattr(wandb_sink.WandbSink, "__init__", refuse)
    with pytest.raises(TrackingError) as info:
        make_sinks(tmp_path, tracking_config(tmp_path, wandb=True))
    assert str(info.value) == ("tracking.wandb: could not start the run: RuntimeError: No API key configured. "
                               "(W&B: run `wandb login`, or set WANDB_MODE=offline)")


# ---- TensorBoard ---------------------------------------------------------------------------------
def accumulator(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    ea.Reload()
    return ea


def text_events(ea, tag):
    from tensorboard.util import tensor_util

    return {e.step: tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in ea.Tensors(f"{tag}/text_summary")}


def test_tensorboard_scalars_histograms_and_sample_tables(tmp_path):
    drive(make_sinks(tmp_path, tracking_config(tmp_path, tensorboard=True)))
    ea = accumulator(tmp_path / "tb")
    tags = ea.Tags()
    for key in ("kl/token_mean", "reward/score_mean", "episodes", "value/explained_variance"):
        assert [e.step for e in ea.Scalars(key)] == list(STEPS), key
    assert [round(e.value, 4) for e in ea.Scalars("kl/token_mean")] == [0.1, 0.2, 0.3]
    assert "not/a_number" not in tags["scalars"]
    for key in ("scores", "seq_kl", "lengths"):
        assert [e.step for e in ea.Histograms(f"dist/{key}")] == list(STEPS), key
    assert ea.Histograms("dist/seq_kl")[0].histogram_value.num == 2  # the NaN is left out
    assert "dist/gold_scores" not in tags["histograms"]
    samples = text_events(ea, "samples")
    assert sorted(samples) == list(EVAL_STEPS)
    table = samples[3].splitlines()
    assert "| model | prompt_id | prompt | response | score |" in table[2]
    assert "| policy | 0 | prompt \\| 0 ↵ line two | resp 0 at 3 |" in table[4]  # pipes escaped, one line per row
    assert "kl_spike" in text_events(ea, "findings")[3]
    assert "lr: 1.0e-05" in text_events(ea, "config")[0]


def test_tensorboard_resume_drops_the_events_after_the_checkpoint(tmp_path):
    from policyshift.tracking.tensorboard import TensorBoardSink

    first = TensorBoardSink(tmp_path)
    for step in (1, 2, 3, 4):
        first.log_scalars({"x": float(step)}, step)
    first.close()
    resumed = TensorBoardSink(tmp_path, resume_step=2)  # the checkpoint was at step 2
    for step in (3, 4):
        resumed.log_scalars({"x": 10.0 * step}, step)
    resumed.close()
    assert [(e.step, e.value) for e in accumulator(tmp_path / "tb").Scalars("x")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    fresh = TensorBoardSink(tmp_path)  # a fresh run in the same (overwritten) directory starts clean
    fresh.log_scalars({"x": 7.0}, 1)
    fresh.close()
    assert [(e.step, e.value) for e in accumulator(tmp_path / "tb").Scalars("x")] == [(1, 7.0)]


# ---- W&B (offline) -------------------------------------------------------------------------------
def wandb_records(path):
    """The records of a .wandb file: the LevelDB-log framing wandb writes (a 7-byte header, 32 KiB
    blocks of 7-byte-headed chunks), each payload a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, buf = open(path, "rb").read(), 32768, 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        buf += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


def finished_wandb_records(path, timeout=30.0):
    """wandb-core may still be writing the file when finish() returns: wait for the exit record."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(path))
        except Exception:  # noqa: BLE001 - a half-written chunk
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def item_key(item):
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_run_has_every_step_and_a_table_per_eval_step(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
                        "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(name, value)
    run_dir = tmp_path / "run"
    config = tracking_config(run_dir, wandb=True, run_name="unit")
    sink = make_sinks(run_dir, config)
    assert sink.names == ["jsonl", "wandb"]
    drive(sink, config.to_dict())
    assert not sink.disabled
    (offline,) = glob.glob(str(run_dir / "wandb" / "offline-run-*"))
    (log,) = glob.glob(f"{offline}/run-*.wandb")
    history, summary, run_record = {}, {}, None
    for record in finished_wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item_key(i): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(row["_step"], {}).update(row)
        elif kind == "summary":
            summary.update({item_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "run":
            run_record = record.run
    assert run_record.display_name == "unit" and run_record.project == "policyshift"
    config_items = {i.key: json.loads(i.value_json) for i in run_record.config.update}
    assert config_items["tracking"]["run_name"] == "unit"
    assert [s for s in sorted(history) if "kl/token_mean" in history[s]] == list(STEPS)
    assert [round(history[s]["kl/token_mean"], 4) for s in STEPS] == [0.1, 0.2, 0.3]
    for s in STEPS:
        assert history[s]["dist/scores/_type"] == "histogram" and history[s]["dist/lengths/_type"] == "histogram"
    assert round(summary["kl/token_mean"], 4) == 0.3 and summary["reward/score_mean"] == 4.0  # the last step
    # one table per eval step, under its own key: step 0 (reference) is not overwritten by step 3
    for step in EVAL_STEPS:
        key = f"samples/step_{step:06d}"
        assert history[step][f"{key}/_type"] == "table-file" and history[step][f"{key}/nrows"] == 2
        table = json.loads((Path(offline) / "files" / history[step][f"{key}/path"]).read_text())
        assert table["columns"][:2] == ["step", "model"] and {r[0] for r in table["data"]} == {step}
        assert {r[1] for r in table["data"]} == {"reference" if step == 0 else "policy"}
    assert history[3]["findings/step_000003/_type"] == "table-file"
    assert json.loads((run_dir / "tracking.json").read_text())["wandb_run_id"] == run_record.run_id


# ---- MLflow (local sqlite store in the run directory) ----------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy deprecations inside MLflow
def test_mlflow_metrics_params_sample_artifacts_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    config = tracking_config(run_dir, mlflow=True, run_name="unit")
    sink = make_sinks(run_dir, config)
    assert sink.names == ["jsonl", "mlflow"]
    (run_dir / "report.html").write_text("<html>report</html>")
    drive(sink, config.to_dict())
    assert not sink.disabled
    assert (run_dir / "mlflow.db").is_file() and (run_dir / "mlartifacts").is_dir()

    client = MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("policyshift").experiment_id])
    assert run.info.run_name == "unit" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "kl/token_mean")
    assert sorted((m.step, round(m.value, 4)) for m in history) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert len(client.get_metric_history(run.info.run_id, "optim/skipped_updates")) == 3
    params = run.data.params
    assert params["ppo.lr"] == "1e-05" and params["tracking.run_name"] == "unit" and params["tracking.mlflow"] == "True"
    assert params["tracking.wandb_entity"] == "None"
    root = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "report.html", "samples", "findings"} <= root
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "samples")) == [f"samples/step-{s}.json" for s in EVAL_STEPS]
    local = client.download_artifacts(run.info.run_id, "samples/step-3.json", str(tmp_path / "dl"))
    rows = json.loads(open(local).read())
    assert [r["step"] for r in rows] == [3, 3] and rows[0]["model"] == "policy" and rows[0]["gold_score"] is None

    # a resumed training run continues the same MLflow run
    resumed = make_sinks(run_dir, config, resume_step=3)
    resumed.log_config(config.to_dict())
    resumed.log_scalars(metrics(4), 4)
    resumed.close()
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run.info.run_id]
    assert len(client.get_metric_history(run.info.run_id, "kl/token_mean")) == 4


# ---- end to end: the trainer writes TensorBoard events ----------------------------------------------
def test_trainer_writes_tensorboard_events(tiny_world, tmp_path):
    from policyshift import PPOTrainer

    out = tmp_path / "run"
    cfg = PPOConfig.from_dict({
        "model": {"policy": tiny_world["policy"]},
        "data": {"prompts": tiny_world["prompts"]},
        "reward": {"function": "tiny:good_fraction"},
        "rollout": {"batch_size": 8, "max_new_tokens": 6},
        "ppo": {"epochs": 1},
        "analysis": {"every": 3, "num_prompts": 2},
        "train": {"steps": 3, "output_dir": str(out), "save_every": 0, "seed": 0},
        "tracking": {"tensorboard": True},
    })
    PPOTrainer(cfg).train()
    ea = accumulator(out / "tb")
    assert [e.step for e in ea.Scalars("kl/token_mean")] == [1, 2, 3]
    assert [e.step for e in ea.Histograms("dist/scores")] == [1, 2, 3]
    assert sorted(text_events(ea, "samples")) == [0, 3]
    assert (out / "metrics.jsonl").is_file()  # JSONL still written alongside


# ---- tracking helpers -----------------------------------------------------------------------------
def test_null_sink_is_an_empty_multisink(tmp_path):
    from policyshift.tracking import MultiSink, NullSink

    sink = NullSink()
    assert isinstance(sink, MultiSink) and sink.sinks == [] and sink.name == "null" and NullSink().sinks is not sink.sinks
    sink.log_config({"a": 1})
    sink.log_scalars({"a": 1.0}, 1)
    sink.log_histograms({"a": [1.0]}, 1)
    sink.log_samples([{"prompt": "p"}], 1)
    sink.log_findings([{"detector": "d"}], 1)
    sink.log_artifact(tmp_path / "report.html")
    sink.close()
    assert list(tmp_path.iterdir()) == []


def test_jsonl_sink_is_named_by_its_class(tmp_path):
    from policyshift.config import PPOConfig
    from policyshift.tracking import make_sinks

    config = PPOConfig.from_dict({"tracking": {"tensorboard": False}})
    sink = make_sinks(tmp_path, config)
    assert sink.names == ["jsonl"]
    sink.close()


def test_clean_json_nulls_non_finite_floats_at_any_depth():
    import math

    from policyshift.runfiles import clean_json

    nan, inf = float("nan"), float("inf")
    assert clean_json({"a": nan, "b": [1.0, -inf, (2, inf)], "c": {"d": inf, "e": "x"}, "f": None}) == \
        {"a": None, "b": [1.0, None, [2, None]], "c": {"d": None, "e": "x"}, "f": None}
    assert clean_json(nan) is None and clean_json(1.5) == 1.5 and clean_json("nan") == "nan" and clean_json(3) == 3
    assert math.isfinite(clean_json(1e308))


def test_one_line_names_the_type_and_the_first_line():
    from policyshift.tracking.base import one_line

    assert one_line(RuntimeError("down\nmore")) == "RuntimeError: down"
    assert one_line(RuntimeError()) == "RuntimeError"
