"""FSDP2 and DeepSpeed ZeRO-2/3 under 2 CPU processes (accelerate's own prepare path, switched on by
tests/sharded_launch.py): the run equals the DDP run of the same config — so the whole weights are
gathered for sampling and probes, and the loss scaling and gradient accumulation match — final/
holds whole weights, and a killed run resumes exactly from the gathered checkpoint."""

import importlib.util
from pathlib import Path

import pytest
import torch
from test_distributed import launch, rows, write_config
from transformers import AutoModelForCausalLM

TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
# 4 steps; 2 minibatches × 2 micro-batches per process: DeepSpeed must step once per 2 backward passes
ARGS = ["--ppo.grad_accum_steps", "2", "--train.save_rollouts", "false", "--tracking.tensorboard", "false"]
COMPARED = ["kl/token_mean", "kl/seq_mean", "reward/score_mean", "response/length_mean", "policy/entropy",
            "loss/policy", "loss/value", "ppo/clip_frac", "ppo/approx_kl", "optim/grad_norm", "kl/beta"]


def sharded_launch(mode, *args, fault=None):
    return launch(*args, fault=fault, script=(str(TESTS / "sharded_launch.py"), mode))


@pytest.fixture(scope="module")
def config(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    return write_config(tiny_world, tmp / "config.yaml", tmp / "unused")


@pytest.fixture(scope="module")
def ddp(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = launch("--config", str(config), "--train.output_dir", str(out), *ARGS)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def close(a: dict, b: dict, keys, rel: float) -> list[str]:
    return [k for k in keys if a.get(k) is not None and b[k] != pytest.approx(a[k], rel=rel, abs=1e-6)]


# zero2 is `extended` (~70 CPU s, the costliest launch of the file): [zero3] checks the same DeepSpeed engine path (loss scaling,
# accumulation, the gathered final/) against DDP in the default run; zero2's resume was already left to zero3
@pytest.mark.parametrize("mode", ["fsdp2", pytest.param("zero2", marks=[pytest.mark.skipif(not HAS_DEEPSPEED, reason="pip install deepspeed"), pytest.mark.extended]),
                                  pytest.param("zero3", marks=pytest.mark.skipif(not HAS_DEEPSPEED, reason="pip install deepspeed"))])
def test_sharded_run_equals_ddp_and_resumes(mode, config, ddp, tmp_path):
    out = tmp_path / "run"
    result = sharded_launch(mode, "--config", str(config), "--train.output_dir", str(out), *ARGS)
    assert result.returncode == 0, result.stderr[-4000:]
    ours, theirs = rows(out / "metrics.jsonl"), rows(ddp / "metrics.jsonl")
    assert [m["step"] for m in ours] == [1, 2, 3, 4]
    held = {m["parallel/weights_held_fraction"] for m in ours}  # the engine really shards (or replicates) the weights
    assert held == {1.0} if mode == "zero2" else max(held) <= 0.55, held
    assert {m["parallel/weights_held_fraction"] for m in theirs} == {1.0}
    # Step 1 samples from the initial weights: gathered weights must give DDP's rollout to float precision.
    assert not close(theirs[0], ours[0], COMPARED, rel=1e-4), close(theirs[0], ours[0], COMPARED, rel=1e-4)
    # Later steps differ only by the engines' reduction order (reduce-scatter vs all-reduce).
    for a, b in zip(theirs[1:], ours[1:]):
        assert not close(a, b, COMPARED, rel=2e-2), (a["step"], close(a, b, COMPARED, rel=2e-2))
    # the probes ran on gathered weights too: the fixed-prompt samples are DDP's
    assert [s["response"] for s in rows(out / "samples.jsonl") if s["step"] == 0] == [s["response"] for s in rows(ddp / "samples.jsonl") if s["step"] == 0]

    # final/ and the checkpoints hold whole weights (a save_pretrained model, not a shard)
    final, reference = AutoModelForCausalLM.from_pretrained(out / "final"), AutoModelForCausalLM.from_pretrained(ddp / "final")
    for (name, x), y in zip(final.state_dict().items(), reference.state_dict().values()):
        assert x.shape == y.shape and torch.allclose(x, y, atol=2e-3), name

    if mode == "zero2":
        return  # ZeRO-2 checkpoints go through the same DeepSpeed engine files as ZeRO-3
    resumed_out = tmp_path / "resumed"
    killed = sharded_launch(mode, "--config", str(config), "--train.output_dir", str(resumed_out), *ARGS, fault="kill_after_step:3")
    assert killed.returncode != 0
    resumed = sharded_launch(mode, "--resume", str(resumed_out))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    again = rows(resumed_out / "metrics.jsonl")
    assert [m["step"] for m in again] == [1, 2, 3, 4]
    for a, b in zip(ours, again):  # weights, optimizer state and every RNG came back: the same run
        assert not close(a, b, COMPARED, rel=1e-5), (a["step"], close(a, b, COMPARED, rel=1e-5))


class FakeAccelerator:
    """What configure_sharding reads from an Accelerator, without launching processes."""

    def __init__(self, kind: str, fsdp_version: int = 2, processes: int = 2):
        from types import SimpleNamespace

        from accelerate.utils import DistributedType

        self.distributed_type, self.num_processes = DistributedType[kind], processes
        self.is_fsdp2 = kind == "FSDP" and fsdp_version == 2
        self.gradient_accumulation_steps = 1
        self.state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3, deepspeed_config={"zero_optimization": {"stage": 3}}))


def test_configure_sharding_sets_deepspeed_accumulation_and_refuses_what_cannot_run():
    from policyshift.config import ConfigError, PPOConfig
    from policyshift.distributed import configure_sharding

    cfg = PPOConfig()
    cfg.rollout.batch_size, cfg.ppo.num_minibatches, cfg.ppo.grad_accum_steps, cfg.ppo.max_grad_norm = 32, 2, 4, 0.5
    acc = FakeAccelerator("DEEPSPEED", processes=2)
    configure_sharding(acc, cfg)
    ds = acc.state.deepspeed_plugin.deepspeed_config
    # 32 episodes / 2 processes / 2 minibatches / 4 micro-batches = 2 per micro-batch; DeepSpeed steps every 4 backward passes
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 4, 16)
    assert ds["gradient_clipping"] == 0.5 and acc.gradient_accumulation_steps == 4
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # final/ needs whole weights
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        configure_sharding(FakeAccelerator("FSDP", fsdp_version=1), cfg)
    cfg.model.lora.r = 4
    with pytest.raises(ConfigError, match="DDP"):
        configure_sharding(FakeAccelerator("FSDP"), cfg)
    configure_sharding(FakeAccelerator("MULTI_CPU"), cfg)  # DDP: LoRA is fine, nothing to set


def test_fsdp2_in_bf16(config, tmp_path):
    """FSDP2's mixed-precision policy (bf16 compute on fp32 shards): sampling on the unsharded bf16 weights
    and the update agree, so the step-1 policy starts at the reference and the PPO ratio near 1."""
    out = tmp_path / "run"
    result = sharded_launch("fsdp2", "--config", str(config), "--train.output_dir", str(out), *ARGS, "--train.steps", "2",
                            "--train.mixed_precision", "bf16", "--analysis.every", "0")
    assert result.returncode == 0, result.stderr[-4000:]
    first = rows(out / "metrics.jsonl")[0]
    assert abs(first["kl/k1_token_mean"]) < 1e-2 and abs(first["ppo/ratio_mean"] - 1) < 0.1
    assert first["parallel/weights_held_fraction"] <= 0.55


def _blocks_held_worker(rank, port, result_path):
    """FSDP2 (torch's fully_shard, as accelerate applies it) over a policy + critic; sample under
    whole_weights and record, at every block's forward, how many blocks are unsharded at that moment."""
    import os
    from types import SimpleNamespace

    import torch.distributed as dist
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import fully_shard
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from policyshift.distributed import whole_weights
    from policyshift.models import PolicyAndCritic
    from policyshift.rollout import sample

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    models = PolicyAndCritic(GPT2LMHeadModel(config), critic=GPT2ForSequenceClassification(config)).eval()
    ids = torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    expected = sample(models.policy, ids, torch.ones_like(ids), 6, 1.0, None, generator=torch.Generator().manual_seed(2))[0]
    blocks = [*models.policy.transformer.h, *models.critic.transformer.h]
    for block in blocks:
        fully_shard(block)
    fully_shard(models)
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=SimpleNamespace(reshard_after_forward=True)))
    held = []
    for block in blocks:
        block.register_forward_pre_hook(lambda *_: held.append(sum(not hasattr(b.attn.c_attn.weight, "to_local") for b in blocks)))
    result = {}
    for gather_all in (True, False):
        held.clear()
        with whole_weights(accelerator, models, models, gather_all):
            tokens = sample(models.policy, ids, torch.ones_like(ids), 6, 1.0, None, generator=torch.Generator().manual_seed(2))[0]
            models.values(torch.cat([ids, tokens], 1), torch.ones(2, 11, dtype=torch.long), 6)  # the critic, called directly
        result[gather_all] = {"max_held": max(held), "same_tokens": torch.equal(tokens, expected),
                              "resharded": all(hasattr(b.attn.c_attn.weight, "to_local") for b in blocks)}
    if rank == 0:
        torch.save(result, result_path)
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp2_gathers_all_blocks_or_one_block_at_a_time(tmp_path):
    """rollout.gather_weights true: all 6 blocks (policy + critic) unsharded for the whole rollout; false:
    one block at a time (each gathers itself for its forward and is freed after). Both sample the
    tokens of the unsharded model and leave every block sharded afterwards."""
    import torch.multiprocessing as mp
    from test_distributed import free_port

    out = tmp_path / "held.pt"
    mp.spawn(_blocks_held_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    result = torch.load(out)
    assert result[True] == {"max_held": 6, "same_tokens": True, "resharded": True}
    assert result[False] == {"max_held": 1, "same_tokens": True, "resharded": True}


SHORT = [*ARGS, "--train.steps", "2", "--analysis.every", "0"]


@pytest.fixture(scope="module")
def ddp_full_length(config, tmp_path_factory):
    """The DDP run every block-by-block mode is compared with, rollout.stop_at_eos false (read only)."""
    out = tmp_path_factory.mktemp("ddp_full_length") / "run"
    result = launch("--config", str(config), "--train.output_dir", str(out), *SHORT, "--rollout.stop_at_eos", "false")
    assert result.returncode == 0, result.stderr[-4000:]
    return out


# zero3 is `extended` (~170 CPU s: a 2-process ZeRO-3 launch gathering block by block); fsdp2 checks the same rule in the default run
@pytest.mark.parametrize("mode", ["fsdp2", pytest.param("zero3", marks=[pytest.mark.skipif(not HAS_DEEPSPEED, reason="pip install deepspeed"), pytest.mark.extended])])
def test_block_by_block_sampling_equals_ddp(mode, config, ddp_full_length, tmp_path):
    """rollout.gather_weights false (models that fit no single device): the per-block gathers of the
    rollout are collectives, so every process generates max_new_tokens; the run equals DDP's with
    rollout.stop_at_eos false."""
    ours = sharded_launch(mode, "--config", str(config), "--train.output_dir", str(tmp_path / "run"), *SHORT, "--rollout.gather_weights", "false")
    assert ours.returncode == 0, ours.stderr[-4000:]
    for a, b in zip(rows(ddp_full_length / "metrics.jsonl"), rows(tmp_path / "run" / "metrics.jsonl"), strict=True):
        assert not close(a, b, COMPARED, rel=1e-4), (a["step"], close(a, b, COMPARED, rel=1e-4))


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="pip install deepspeed")
# zero2 is `extended`: the skip is decided by the same runtime code before engine.step; zero3 (params sharded too) stays in the default run
@pytest.mark.parametrize("mode", [pytest.param("zero2", marks=pytest.mark.extended), "zero3"])
def test_deepspeed_never_steps_on_a_nonfinite_gradient(mode, config, tmp_path):
    """Every backward of step 1 gets a NaN loss on both processes (POLICYSHIFT_FAULT nonfinite_grad:1): the runtime
    decides to skip before DeepSpeed's engine.step, every update of step 1 is counted as skipped, and the weights
    checkpointed after it are the initial ones, bit for bit; step 2 (no fault) moves them (the check can fail)."""
    initial = AutoModelForCausalLM.from_pretrained(rows_config(config)["model"]["policy"]).state_dict()
    out = tmp_path / "run"
    result = sharded_launch(mode, "--config", str(config), "--train.steps", "2", "--train.save_every", "1", "--train.max_consecutive_skips", "100",
                            "--analysis.every", "0", "--analysis.num_prompts", "0", *ARGS, "--train.output_dir", str(out), fault="nonfinite_grad:1")
    assert result.returncode == 0, result.stderr[-4000:]
    first, second = rows(out / "metrics.jsonl")
    updates = 4 * 2  # ppo.epochs × ppo.num_minibatches
    assert first["optim/skipped_updates"] == updates and second["optim/skipped_updates"] == 0
    after_skips = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-1" / "policy").state_dict()
    assert all(torch.equal(after_skips[k], initial[k]) for k in initial), [k for k in initial if not torch.equal(after_skips[k], initial[k])]
    moved = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    assert any(not torch.equal(moved[k], initial[k]) for k in initial)


def rows_config(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())
