"""Two processes under `accelerate launch` (gloo on CPU): the batch is split, metrics are those of
the whole batch (recomputed here from both processes' raw episodes), the replicas stay identical,
one process writes, and the run resumes under the same number of processes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from policyshift.kl import kl_k3
from policyshift.masked import masked_mean, masked_sum
from tiny import assert_same_metrics, cli_env, rows  # rows: test_sharded imports it from here

TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow

STEPS, BATCH = 4, 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(world, path: Path, out: Path) -> Path:
    cfg = {
        "model": {"policy": world["policy"]}, "data": {"prompts": world["prompts"]},
        "reward": {"function": "tiny:good_fraction", "normalize": True},  # normalization over the whole batch
        "rollout": {"batch_size": BATCH, "max_new_tokens": 8},
        "ppo": {"lr": 3e-3, "num_minibatches": 2},
        "kl": {"controller": "adaptive", "target": 1.0, "horizon": 50},  # β from the whole batch's KL
        "analysis": {"every": 2, "num_prompts": 2},
        "train": {"steps": STEPS, "save_every": 2, "output_dir": str(out), "save_rollouts": True},
        "tracking": {"tensorboard": True},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(*args, processes=2, fault=None, script=("-m", "policyshift")):
    env = {**cli_env(fault), "OMP_NUM_THREADS": "1"}
    # the shipped example config, as a user would launch it
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(TESTS.parent / "examples" / "accelerate" / "cpu_2proc.yaml"),
           "--num_processes", str(processes), "--main_process_port", str(free_port()), *script, "train", *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if "address already in use" in result.stderr.lower() or "EADDRINUSE" in result.stderr:  # the free port was taken meanwhile
        return launch(*args, processes=processes, fault=fault, script=script)
    return result


@pytest.fixture(scope="module")
def run(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    config = write_config(tiny_world, tmp / "config.yaml", tmp / "run")
    result = launch("--config", str(config))
    assert result.returncode == 0, result.stderr[-4000:]
    return config, tmp / "run", result


def test_metrics_are_those_of_both_processes_episodes(run):
    _, out, _ = run
    metrics = rows(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # one writer: each step logged once
    for m in metrics:
        ranks = torch.load(out / "rollouts" / f"step-{m['step']}.pt", weights_only=False)
        assert [r["rank"] for r in ranks] == [0, 1] and all(len(r["prompts"]) == BATCH // 2 for r in ranks)
        assert set(ranks[0]["prompts"]).isdisjoint(ranks[1]["prompts"]) or len(set(ranks[0]["prompts"] + ranks[1]["prompts"])) < BATCH
        width = max(r["response_mask"].shape[1] for r in ranks)
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        mask = torch.cat([pad(r["response_mask"]) for r in ranks])
        kl = torch.cat([pad(r["kl"]) for r in ranks])
        logp, ref = torch.cat([pad(r["logprobs"]) for r in ranks]), torch.cat([pad(r["ref_logprobs"]) for r in ranks])
        scores = torch.cat([r["scores"] for r in ranks])
        # token means weighted by every process's tokens, not a mean of the two per-process means
        assert m["kl/token_mean"] == pytest.approx(masked_mean(kl, mask).item(), abs=1e-6)
        assert m["kl/k3_token_mean"] == pytest.approx(masked_mean(kl_k3(logp, ref), mask).item(), abs=1e-6)
        assert m["kl/seq_mean"] == pytest.approx(masked_sum(kl, mask, 1).mean().item(), abs=1e-5)
        assert m["policy/entropy"] == pytest.approx(masked_mean(torch.cat([pad(r["entropy"]) for r in ranks]), mask).item(), abs=1e-6)
        assert m["response/length_mean"] == pytest.approx(mask.sum(1).mean().item())
        assert m["reward/score_mean"] == pytest.approx(scores.mean().item(), abs=1e-6)
        assert m["reward/score_std"] == pytest.approx(scores.std().item(), abs=1e-6)
        assert m["episodes"] == BATCH * m["step"]
        # whitening used the statistics of all 8 episodes: zero mean / unit variance over both processes
        adv = torch.cat([pad(r["advantages"]) for r in ranks])
        assert masked_mean(adv, mask).item() == pytest.approx(0.0, abs=1e-5)
        assert (masked_sum(adv ** 2, mask) / (mask.sum() - 1)).item() == pytest.approx(1.0, abs=1e-3)
        assert m["parallel/replica_checksum_spread"] == 0.0  # the replicas' weights are identical after every update
    # the check above can tell the two apart: per-process means would have given other numbers
    per_process = [sum(masked_mean(r["kl"], r["response_mask"]).item() for r in torch.load(out / "rollouts" / f"step-{m['step']}.pt", weights_only=False)) / 2
                   for m in metrics]
    assert any(abs(p - m["kl/token_mean"]) > 1e-4 for p, m in zip(per_process, metrics))
    distributions = rows(out / "distributions.jsonl")
    assert all(len(d["scores"]) == BATCH for d in distributions)


def test_only_the_main_process_writes(run):
    _, out, result = run
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    samples = rows(out / "samples.jsonl")
    assert len(samples) == len({(s["step"], s["model"], s["prompt"]) for s in samples})  # no line written twice
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert (out / "final" / "config.json").is_file() and (out / "report.html").is_file()
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".tmp*"))


# `extended` (2 launches, ~20 CPU s): tests/test_rank_kill.py's default tests kill a 2-process run of the same config in
# step 3 (and in step 2's checkpoint), resume it under 2 processes and compare it with the uninterrupted run the same way
@pytest.mark.extended
def test_resume_with_the_same_number_of_processes(run, tmp_path):
    config, ref, _ = run
    out = tmp_path / "run"
    killed = launch("--config", str(config), "--train.output_dir", str(out), fault="kill_after_step:3")
    assert killed.returncode != 0
    resumed = launch("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    b = rows(out / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert_same_metrics(rows(ref / "metrics.jsonl"), b)


def test_another_number_of_processes_cannot_resume(run, tmp_path, capfd):
    """Each process's sampling stream is in the checkpoint: one process cannot continue a 2-process run."""
    import shutil

    from policyshift.cli import main

    out = tmp_path / "run"
    shutil.copytree(run[1], out)  # the fixture's run stays as it is for the other tests
    capfd.readouterr()
    assert main(["train", "--resume", str(out), "--train.steps", "6"]) == 2  # one process: this one
    assert "same number" in capfd.readouterr().err.strip().splitlines()[-1]


def _token_mean_worker(rank, port, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    from accelerate import Accelerator

    from policyshift.distributed import ProcessGroup
    from policyshift.losses import LossNormalizer, aggregate_loss
    from policyshift.runtime import Runtime

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = accelerator.prepare(torch.nn.Linear(3, 1))
    x, mask = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0.0]])
    rows_ = slice(0, 1) if rank == 0 else slice(1, 2)  # process 0 holds 5 tokens, process 1 holds 1
    group = ProcessGroup(accelerator)
    runtime = Runtime(accelerator, group, model, list(model.parameters()), grad_accum_steps=1)
    norm = LossNormalizer(tokens=group.sum(mask[rows_].sum()), sequences=2.0, max_new_tokens=5)
    share = aggregate_loss(model(x[rows_]).squeeze(-1), mask[rows_], "token_mean", norm)  # Σ local / 6 tokens
    accelerator.backward(runtime.to_engine(share))
    if rank == 0:
        torch.save(accelerator.unwrap_model(model).weight.grad.clone(), result_path)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # both processes leave the group together (exiting apart aborts gloo)


def test_loss_is_the_token_mean_over_every_process(tmp_path):
    """DDP averages gradients over processes; with 5 tokens on one process and 1 on the other the
    scaled losses must give the gradient of the token mean over all 6 tokens."""
    import torch.multiprocessing as mp

    out = tmp_path / "grad.pt"
    mp.spawn(_token_mean_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, mask = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0.0]])
    masked_mean(model(x).squeeze(-1), mask).backward()
    assert torch.allclose(torch.load(out), model.weight.grad, atol=1e-6)
    per_process_mean = (model(x[:1]).squeeze(-1).mean() + model(x[1:, :1]).squeeze(-1).mean()) / 2
    model.zero_grad()
    per_process_mean.backward()
    assert not torch.allclose(torch.load(out), model.weight.grad, atol=1e-3)  # what plain DDP averaging would give


def test_lora_under_two_processes(tiny_world, tmp_path):
    """DDP over a LoRA policy and critic: only the adapters (and the critic's head) are synchronized."""
    config = write_config(tiny_world, tmp_path / "config.yaml", tmp_path / "run")
    result = launch("--config", str(config), "--train.steps", "2", "--train.save_rollouts", "false", "--analysis.every", "0",
                    "--model.lora.r", "4", "--model.lora.critic", "true", "--tracking.tensorboard", "false")
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = rows(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and all(m["parallel/replica_checksum_spread"] == 0.0 for m in metrics)
    assert abs(metrics[0]["kl/k1_token_mean"]) < 1e-5  # the adapter-off reference equals the policy at the start
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()


def test_groups_stay_on_one_process_and_advantages_are_the_whole_batchs(tiny_world, tmp_path):
    """GRPO on 2 processes (batch 8 = 4 prompts × 2 samples): each process holds 2 whole groups, and the
    advantages every process computed equal the estimator on the gathered batch in one process (scale
    "batch" divides by the std of all 8 scores, so it needs the other process's scores)."""
    from policyshift.advantages import AdvantageInputs, get_estimator

    config = write_config(tiny_world, tmp_path / "config.yaml", tmp_path / "run")
    result = launch("--config", str(config), "--algorithm.advantage", "grpo", "--rollout.num_generations", "2",
                    "--algorithm.scale", "batch", "--kl.placement", "loss", "--kl.estimator", "k3", "--train.steps", "2", "--analysis.every", "0")
    assert result.returncode == 0, result.stderr[-4000:]
    for step in (1, 2):
        ranks = torch.load(tmp_path / "run" / "rollouts" / f"step-{step}.pt", weights_only=False)
        ids = [r["group_ids"].tolist() for r in ranks]
        assert ids == [[0, 0, 1, 1], [2, 2, 3, 3]]  # whole groups, none spanning the processes
        for r in ranks:
            assert r["prompts"][0] == r["prompts"][1] and r["prompts"][2] == r["prompts"][3]
            assert r["returns"] is None and r["values"] is None
        width = max(r["response_mask"].shape[1] for r in ranks)
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        mask = torch.cat([pad(r["response_mask"]) for r in ranks])
        x = AdvantageInputs(scores=torch.cat([r["scores"] for r in ranks]), kl=torch.cat([pad(r["kl"]) for r in ranks]), beta=0.0,
                            mask=mask, group_ids=torch.cat([r["group_ids"] for r in ranks]), scale="batch")
        expected, _ = get_estimator("grpo").compute(x)
        torch.testing.assert_close(torch.cat([pad(r["advantages"]) for r in ranks]), expected)
