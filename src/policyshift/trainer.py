"""PPOTrainer: rollout → rewards + KL → GAE → clipped PPO updates, one step at a time.

Each PPO step (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022):
  1. sample a response y ~ π_θ(·|x) for a batch of prompts x, recording log π_old, log π_ref, V_old;
  2. score: s = RM(x, y) (or a Python function), minus the missing-EOS penalty, normalized/clipped;
  3. shape: r_t = −β·KL_t on every response token, + s at the last token;
  4. advantages: GAE(γ, λ) over the response tokens, whitened over the batch (masked);
  5. `ppo.epochs` passes over shuffled minibatches: clipped surrogate + clipped value loss;
  6. the KL controller updates β from the batch's sequence KL.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import signal
import threading
import time
import warnings
from collections import defaultdict
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from policyshift.advantages import compute_gae, shape_rewards, whiten_advantages
from policyshift.checkpoint import list_checkpoints, restore_checkpoint, save_checkpoint, save_models
from policyshift.config import ConfigError, PPOConfig, require_runnable, validate
from policyshift.data import DataError, PromptSampler, load_prompts, split_fixed_prompts
from policyshift.distributed import (ProcessGroup, configure_sharding, gather_rollout, gather_state, global_numel, load_state, local_numel,
                                     make_accelerator, whole_model_loading, whole_weights)
from policyshift.engines import make_engine
from policyshift.faults import fault_point
from policyshift.kl import kl_estimate, make_kl_controller
from policyshift.losses import entropy_bonus, explained_variance, policy_loss, value_loss
from policyshift.masked import masked_mean, masked_sum
from policyshift.metrics import rollout_metrics
from policyshift.models import build_training_models, load_causal_lm, load_tokenizer
from policyshift.rewards import FunctionReward, RunningMoments, check_finite, make_reward, postprocess_scores
from policyshift.rollout import Rollout, generate_rollout
from policyshift.tracking import make_sinks
from policyshift.tracking.jsonl import truncate_run_logs


class RunDirError(ValueError):
    """The output directory cannot hold this run."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. every update is non-finite); one line saying why and what to try."""


def prepare_run_dir(path: Path, overwrite: bool, resume: bool = False) -> None:
    if resume:
        if not list_checkpoints(path):
            raise RunDirError(f"{path} has no complete checkpoint to resume from")
    elif (path / "metrics.jsonl").exists() or (path / "checkpoints").exists():
        if not overwrite:
            raise RunDirError(f"{path} already holds a run; use --resume {path} to continue it or --train.overwrite true to replace it")
        for name in ("metrics.jsonl", "samples.jsonl", "distributions.jsonl", "findings.jsonl"):
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
        shutil.rmtree(path / "rollouts", ignore_errors=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"output directory {path} is not writable ({exc.strerror})") from None


@contextlib.contextmanager
def stop_on_signals(trainer):
    """SIGINT/SIGTERM: finish the current step, checkpoint, stop. A second signal interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        trainer.stop_signal = signum
        signal.signal(signum, previous[signum])  # the next one acts immediately

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def enable_activation_checkpointing(model) -> None:
    # Non-reentrant checkpointing: works with frozen inputs (LoRA) and DDP; transformers v5 renamed the switch.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_world_size(cfg: PPOConfig, world_size: int) -> None:
    """Under `accelerate launch` every process gets rollout.batch_size / W episodes and the same number
    of minibatches and micro-batches (collectives must line up)."""
    if world_size == 1:
        return
    b, p = cfg.rollout.batch_size, cfg.ppo
    if b % world_size or (b // world_size) % (p.num_minibatches * p.grad_accum_steps):
        raise ConfigError(f"rollout.batch_size ({b}) must split into {world_size} processes × ppo.num_minibatches ({p.num_minibatches}) "
                          f"× ppo.grad_accum_steps ({p.grad_accum_steps})")
    if cfg.rollout.engine == "vllm":
        raise ConfigError("rollout.engine=vllm runs inside a single training process; use rollout.engine=hf under accelerate launch")
    if cfg.reward.on_nonfinite == "skip":
        raise ConfigError("reward.on_nonfinite=skip needs a single process (dropped episodes would unbalance the processes); use error")


def fit_prompt_length(policy, tokenizer, prompts: list[str], max_prompt_length: int, max_new_tokens: int) -> int:
    """The prompt budget: data.max_prompt_length, shrunk so prompt + response fits the model's context.
    Longer prompts are cut from the left; say how many, once."""
    context = getattr(policy.config, "max_position_embeddings", None) or getattr(policy.config, "n_positions", None)
    budget = max_prompt_length
    if context is not None and budget + max_new_tokens > context:
        budget = context - max_new_tokens
        if budget < 1:
            raise ConfigError(f"rollout.max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the model's {context}-token context")
        warnings.warn(f"prompts cut to {budget} tokens so that prompt + {max_new_tokens} response tokens fit the {context}-token context", stacklevel=2)
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    too_long = sum(n > budget for n in lengths)
    if too_long:
        warnings.warn(f"{too_long} of {len(prompts)} prompts are longer than {budget} tokens; they are cut from the left", stacklevel=2)
    return budget


class PPOTrainer:
    """`PPOTrainer(PPOConfig(...)).train()`. Models, tokenizer, reward and prompts load from the
    config; any of them may instead be passed in as objects (a reward as f(prompts, responses))."""

    def __init__(self, config: PPOConfig, *, policy=None, tokenizer=None, reward=None, ref_policy=None, prompts=None, resume: bool = False):
        validate(config)
        require_runnable(config, policy is not None, prompts is not None, reward is not None)
        self.cfg = cfg = config
        self.accelerator = make_accelerator(cfg.train.device, cfg.train.mixed_precision)
        self.group = group = ProcessGroup(self.accelerator)  # one process: every collective is the identity
        check_world_size(cfg, group.world_size)
        configure_sharding(self.accelerator, cfg)
        self.run_dir = Path(cfg.train.output_dir)
        if group.is_main:
            prepare_run_dir(self.run_dir, cfg.train.overwrite, resume)
        group.barrier()
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        seed_everything(cfg.train.seed)
        explicit = cfg.train.device not in ("auto", "cpu") and group.world_size == 1
        self.device = torch.device(cfg.train.device) if explicit else self.accelerator.device

        m = cfg.model
        self.tokenizer = tokenizer or load_tokenizer(m.tokenizer or m.policy, m.trust_remote_code)
        with whole_model_loading(self.accelerator):
            policy = policy if policy is not None else load_causal_lm(m.policy, m.dtype, m.trust_remote_code)
            self.reward = self._make_reward(reward, cfg.reward.model, cfg.reward.function)
            self.gold_reward = self._make_reward(None, cfg.analysis.gold_reward_model, cfg.analysis.gold_reward_function)
            self.models, self.ref_policy, self.critic_source = build_training_models(m, policy, ref_policy, self.reward, cfg.reward.model, self.tokenizer)
        self.models.to(self.device)
        self.ref_policy.to(self.device)
        if m.gradient_checkpointing:
            for module in (self.models.policy, self.models.critic):
                if module is not None:
                    enable_activation_checkpointing(module)

        all_prompts = prompts if prompts is not None else load_prompts(cfg.data.prompts, cfg.data.prompt_field, cfg.data.split)
        if cfg.analysis.prompts:
            self.train_prompts, self.fixed_prompts = all_prompts, load_prompts(cfg.analysis.prompts, cfg.data.prompt_field)
        else:
            self.train_prompts, self.fixed_prompts = split_fixed_prompts(all_prompts, cfg.analysis.num_prompts, cfg.train.seed)
        if not self.train_prompts:
            raise DataError("no training prompts left after holding out the fixed analysis prompts")
        self.sampler = PromptSampler(self.train_prompts, cfg.rollout.batch_size, cfg.train.seed, cfg.data.shuffle)
        self.max_prompt_length = fit_prompt_length(policy, self.tokenizer, all_prompts + self.fixed_prompts, cfg.data.max_prompt_length, cfg.rollout.max_new_tokens)

        p = cfg.ppo
        # fused: one kernel for all parameters instead of a loop of small ops per tensor (CPU and CUDA)
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {"foreach": True}
        trainable = lambda: [w for w in self.models.parameters() if w.requires_grad]  # noqa: E731
        optimizer = torch.optim.AdamW(trainable(), lr=p.lr, eps=p.adam_eps, weight_decay=p.weight_decay, **fused)
        # `train_model` is what the update calls (DDP/FSDP/DeepSpeed-wrapped under `accelerate launch`;
        # the same module with one process); rollouts and analysis use the unwrapped `self.models`.
        self.train_model, self.optimizer = self.accelerator.prepare(self.models, optimizer)
        self.trained_params = trainable()  # after prepare: FSDP2 has replaced them by their shards (DTensors)
        # the share of the trained weights this process stores: 1 (DDP, ZeRO-2), 1/W (FSDP2, ZeRO-3)
        self.weights_held_fraction = sum(map(local_numel, self.trained_params)) / max(1, sum(map(global_numel, self.trained_params)))
        from transformers import get_scheduler

        name = {"constant": "constant_with_warmup"}.get(p.lr_scheduler, p.lr_scheduler)
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=p.warmup_steps, num_training_steps=cfg.train.steps * p.epochs * p.num_minibatches)
        self.kl_ctl = make_kl_controller(cfg.kl.controller, cfg.kl.beta, cfg.kl.target, cfg.kl.horizon)
        self.moments = RunningMoments() if cfg.reward.normalize else None
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.train.seed + group.rank)  # sampling: each process its own episodes
        self.shuffle_gen = torch.Generator().manual_seed(cfg.train.seed + 1)  # minibatch order
        self.step, self.episodes, self.skipped_updates, self.consecutive_skips = 0, 0, 0, 0
        self.history: list[dict] = []
        self.distributions: list[dict] = []  # per-sample values of each step, for the detectors
        self.logged_samples, self.logged_findings = [], []  # a resumed run's, up to its checkpoint (for LiveAnalysis)
        self.resumed_from: Path | None = self._resume() if resume else None
        # The sampler: the training policy itself (hf), or vLLM synced after every update; built after a
        # resume so it starts from the restored weights.
        self.engine = make_engine(cfg.rollout, self.models.policy, self.tokenizer, seed=cfg.train.seed,
                                  max_model_len=self.max_prompt_length + cfg.rollout.max_new_tokens, trust_remote_code=m.trust_remote_code)
        self.sink = make_sinks(self.run_dir, cfg, is_main_process=group.is_main, resume_step=self.step if resume else None)
        self.stop_signal: int | None = None
        self.analysis = None  # set in train(): policyshift.analysis.live.LiveAnalysis

    def _resume(self) -> Path:
        """Continue from the latest complete checkpoint: weights, optimizer, scheduler, β, data
        position, reward moments, every RNG; the logs are cut back to that step."""
        ckpt = list_checkpoints(self.run_dir)[-1]
        load_sharded = (lambda *a: load_state(self.accelerator, self.train_model, self.optimizer, *a)) if self.group.sharded else None
        state = restore_checkpoint(ckpt, self.models, self.optimizer, self.scheduler, {"sampler": self.generator, "shuffle": self.shuffle_gen},
                                   self.group.rank, self.group.world_size, load_sharded)
        self.step, self.episodes, self.skipped_updates = state["step"], state["episodes"], state["skipped_updates"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.sampler.load_state_dict(state["sampler"])
        if self.moments is not None and state["reward_moments"]:
            self.moments.load_state_dict(state["reward_moments"])
        logs = truncate_run_logs(self.run_dir, self.step, write=self.group.is_main)
        self.group.barrier()  # every process reads the logs the main one has cut back
        self.history, self.distributions = logs["metrics"], logs["distributions"]
        self.logged_samples, self.logged_findings = logs["samples"], logs["findings"]
        return ckpt

    def _make_reward(self, obj, model_path, function_spec):
        if obj is not None:
            return obj if hasattr(obj, "tokenizer") or isinstance(obj, FunctionReward) else FunctionReward(obj, "reward callable")
        if model_path is None and function_spec is None:
            return None
        r = make_reward(model_path, function_spec, self.cfg.model.dtype, self.cfg.model.trust_remote_code, self.cfg.reward.batch_size, self.cfg.reward.max_length)
        if hasattr(r, "model"):
            r.model.to(self.device)
        return r

    def whole_weights(self):
        """Sampling and probes call the policy/critic submodules directly: under FSDP / ZeRO-3 every
        process gathers the whole weights for the duration, or with rollout.gather_weights false lets
        each block gather itself per forward (a no-op otherwise)."""
        return whole_weights(self.accelerator, self.train_model, self.models, self.cfg.rollout.gather_weights)

    @property
    def rollout_config(self):
        """cfg.rollout as sampling must see it: when each forward on sharded weights is a collective
        (rollout.gather_weights false), every process generates max_new_tokens so that their per-token
        all-gathers line up (an early stop at EOS would differ between processes)."""
        if self.group.weights_sharded and not self.cfg.rollout.gather_weights:
            return replace(self.cfg.rollout, stop_at_eos=False)
        return self.cfg.rollout

    # ---- one PPO step ---------------------------------------------------------------------------
    def score(self, rollout: Rollout) -> Rollout:
        """The rollout with its scores; with reward.on_nonfinite=skip, episodes whose reward is NaN/inf are dropped."""
        raw = self.reward(rollout.prompts, rollout.responses).to(self.device)
        r = self.cfg.reward
        finite = torch.isfinite(raw)
        if self.group.any(not bool(finite.all())):
            if r.on_nonfinite == "error":  # (skip runs in one process only: check_world_size)
                check_finite(raw, rollout.prompts, rollout.responses, "reward")
                raise TrainingError("the reward was non-finite on another process; its error names the episode")
            if not bool(finite.any()):
                check_finite(raw, rollout.prompts, rollout.responses, "reward (every episode of the batch)")
            keep = finite.nonzero().flatten().cpu()
            rollout, raw = rollout.select(keep), raw[keep.to(raw.device)]
        # Normalization statistics are the whole batch's: every process post-processes all scores, keeps its own.
        scores = postprocess_scores(self.group.gather_rows(raw), self.group.gather_rows(rollout.has_eos), r.missing_eos_penalty, self.moments, r.clip)
        return replace(rollout, scores=scores[self.group.rank * len(rollout) : (self.group.rank + 1) * len(rollout)])

    def ppo_step(self) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        prompts = self.group.local_slice(self.sampler.next_batch())  # every process draws the same batch, keeps its slice
        with self.accelerator.autocast(), self.whole_weights():  # autocast: the update's precision, so ratios start at 1
            rollout = generate_rollout(self.models, self.ref_policy, self.tokenizer, prompts, self.rollout_config, self.max_prompt_length,
                                       self.generator, engine=self.engine)
        t_gen = time.perf_counter()
        n_sampled = len(rollout)
        rollout = self.score(rollout)
        gold = self.gold_reward(rollout.prompts, rollout.responses) if self.gold_reward else None
        t_score = time.perf_counter()

        mask, beta = rollout.response_mask, self.kl_ctl.beta
        kl = kl_estimate(cfg.kl.estimator, rollout.logprobs, rollout.ref_logprobs)  # per token, estimator as configured
        in_reward = cfg.kl.placement == "reward"
        rewards = shape_rewards(rollout.scores, kl, beta if in_reward else 0.0, mask)
        advantages, returns = compute_gae(rewards, rollout.values, mask, cfg.ppo.gamma, cfg.ppo.lam)
        if cfg.ppo.whiten_advantages:
            advantages = whiten_advantages(advantages, mask, all_sum=self.group.sum)
        update_stats = self.update(rollout, advantages, returns, beta)
        self.engine.sync_weights(self.models.policy)  # a separate engine samples the next batch from the new weights
        t_update = time.perf_counter()
        if cfg.train.save_rollouts:
            self.save_rollouts(rollout, kl, advantages, returns)

        # Metrics and the KL controller see the whole batch: every process's episodes, gathered.
        g = self.group
        rollout, kl, rewards, returns = gather_rollout(rollout, g), g.gather_rows(kl), g.gather_rows(rewards), g.gather_rows(returns)
        gold = g.gather_rows(gold.to(self.device)) if gold is not None else None
        mask = rollout.response_mask
        seq_kl = masked_sum(kl, mask, 1)
        self.kl_ctl.update(seq_kl.mean().item(), len(rollout))  # Ziegler: β follows the sequence KL
        self.step, self.episodes = self.step + 1, self.episodes + len(rollout)
        metrics = {
            "episodes": self.episodes,
            "reward/nonfinite_skipped": n_sampled - len(rollout),
            **rollout_metrics(rollout, kl, beta, rewards),
            **update_stats,
            "value/explained_variance": explained_variance(rollout.values, returns, mask).item(),
            "time/generate": t_gen - t0,
            "time/score": t_score - t_gen,
            "time/update": t_update - t_score,
            "time/step": t_update - t0,
            "perf/tokens_per_s": (rollout.query_mask.sum() + mask.sum()).item() / (t_update - t0),
            **self.parallel_metrics(),
        }
        if gold is not None:
            metrics["reward/gold_mean"] = gold.float().mean().item()
            metrics["reward/gold_std"] = gold.float().std().item() if len(gold) > 1 else 0.0
        self.sink.log_scalars(metrics, self.step)
        distribution = {"scores": rollout.scores.tolist(), "seq_kl": seq_kl.tolist(), "lengths": rollout.lengths.tolist(),
                        "gold_scores": gold.tolist() if gold is not None else None}
        self.sink.log_histograms(distribution, self.step)
        self.distributions.append({"step": self.step, **distribution})
        self.history.append({"step": self.step, **metrics})
        return metrics

    def update(self, batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor, beta: float) -> dict:
        p, T = self.cfg.ppo, self.cfg.rollout.temperature
        stats, skipped = defaultdict(list), 0
        if self.cfg.model.gradient_checkpointing:
            self.models.train()  # HF checkpoints activations only in train mode; dropout is already 0 everywhere
        for _ in range(p.epochs):
            # tensor_split, not split: episodes dropped for a non-finite reward leave uneven minibatches
            for mb_index in torch.randperm(len(batch), generator=self.shuffle_gen).tensor_split(p.num_minibatches):
                self.optimizer.zero_grad(set_to_none=True)
                micro_batches = [i for i in mb_index.tensor_split(p.grad_accum_steps) if len(i)]
                for j, index in enumerate(micro_batches):
                    mb = batch.select(index)
                    # Drop columns that are padding in every row of this micro-batch: trailing response
                    # columns and leading prompt columns (positions come from the mask, so this is exact).
                    R = int(mb.lengths.max().clamp(min=1))
                    first = int(mb.query_mask.any(0).long().argmax())
                    mask, response_ids = mb.response_mask[:, :R], mb.response_ids[:, :R]
                    input_ids = torch.cat([mb.query_ids[:, first:], response_ids], 1)
                    attention_mask = torch.cat([mb.query_mask[:, first:], mask.long()], 1)
                    last = j == len(micro_batches) - 1  # gradients are all-reduced once, after the last micro-batch
                    with contextlib.nullcontext() if last else self.accelerator.no_sync(self.train_model):
                        # logprobs and entropy chunk by chunk over tokens (rollout.logit_chunk_size): no (B, R, V) logits;
                        # the entropy is only logged (no backward through it) when there is no bonus
                        with_entropy = p.ent_coef > 0 or self.cfg.rollout.exact_kl
                        new_logprobs, token_entropy, values = self.train_model(
                            input_ids, attention_mask, response_ids, mask, T, self.cfg.rollout.logit_chunk_size, with_entropy, p.ent_coef > 0)
                        pg_loss, pg = policy_loss(new_logprobs, mb.logprobs[:, :R], advantages[index, :R], mask, p.clip_range)
                        vf_loss, vf = value_loss(values, mb.values[:, :R], returns[index, :R], mask, p.clip_range_value)
                        loss = pg_loss + p.vf_coef * vf_loss
                        if token_entropy is not None:
                            entropy = entropy_bonus(token_entropy, mask)
                            loss = loss - p.ent_coef * entropy
                            stats["loss/entropy"].append(float(entropy.detach()))
                        if self.cfg.kl.placement == "loss":  # GRPO/verl style: β·KL(π_θ‖π_ref) as a loss term
                            kl_loss = masked_mean(kl_estimate(self.cfg.kl.estimator, new_logprobs, mb.ref_logprobs[:, :R]), mask)
                            loss = loss + beta * kl_loss
                            stats["loss/kl"].append(kl_loss.item())
                        self.backward(self.across_processes(loss, mask), last)
                    fault_point("kill_in_update", self.step + 1)
                    for k, v in {"loss/policy": pg_loss, "loss/value": vf_loss, "loss/total": loss,
                                 "ppo/clip_frac": pg["clip_frac"], "ppo/approx_kl": pg["approx_kl"], "ppo/ratio_mean": pg["ratio_mean"],
                                 "ppo/ratio_var": pg["ratio_var"], "value/clip_frac": vf["clip_frac"]}.items():
                        stats[k].append(float(v.detach()))
                grad_norm = self.clip_gradients(p.max_grad_norm or math.inf)
                stats["optim/grad_norm"].append(grad_norm.item())
                if not torch.isfinite(grad_norm):  # a non-finite loss/gradient never reaches the weights
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped, self.consecutive_skips = skipped + 1, self.consecutive_skips + 1
                    if self.consecutive_skips >= self.cfg.train.max_consecutive_skips:
                        raise TrainingError(
                            f"{self.consecutive_skips} consecutive updates had a non-finite loss or gradient (step {self.step + 1}); "
                            "lower ppo.lr, set reward.clip/normalize, or check the reward for huge values")
                    continue
                self.consecutive_skips = 0
                self.optimizer.step()
                self.scheduler.step()
        self.models.eval()
        self.skipped_updates += skipped
        finite_mean = lambda v: float(np.mean(f)) if len(f := [x for x in v if math.isfinite(x)]) else math.nan  # noqa: E731
        # every epoch visits each episode once: the statistics stand for epochs × this process's tokens
        out = self.token_weighted({k: finite_mean(v) for k, v in stats.items()}, p.epochs * float(batch.response_mask.sum()))
        return {**out, "optim/lr": self.scheduler.get_last_lr()[0], "optim/skipped_updates": skipped}

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """One micro-batch's gradients, accumulated over ppo.grad_accum_steps micro-batches. DeepSpeed
        accumulates itself: its backward divides by its gradient_accumulation_steps (set equal by
        configure_sharding) and its step clips, steps and zeroes only at the boundary named here."""
        if self.group.deepspeed:
            self.train_model.set_gradient_accumulation_boundary(last)
            self.train_model.backward(loss)
            self.train_model.step()
        else:
            self.accelerator.backward(loss / self.cfg.ppo.grad_accum_steps)

    def parallel_metrics(self) -> dict:
        """Several processes. `parallel/weights_held_fraction`: the share of the trained weights this
        process stores (1 under DDP/ZeRO-2, 1/W under FSDP/ZeRO-3: the sharding is real). DDP keeps a full
        copy per process that must stay identical: `parallel/replica_checksum_spread` is the spread
        (max − min) of a float64 checksum of the trained weights across processes."""
        if self.group.world_size == 1:
            return {}
        held = {"parallel/weights_held_fraction": self.weights_held_fraction}
        if self.group.sharded:
            return held
        checksum = torch.stack([p.detach().double().sum() for p in self.trained_params]).sum()
        sums = self.group.gather_rows(checksum.reshape(1))
        return {**held, "parallel/replica_checksum_spread": (sums.max() - sums.min()).item()}

    def save_rollouts(self, rollout: Rollout, kl: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor) -> None:
        """RUN_DIR/rollouts/step-N.pt (train.save_rollouts): a list with one dict per process, in rank order."""
        local = {f.name: v.detach().cpu() if isinstance(v := getattr(rollout, f.name), torch.Tensor) else v for f in fields(rollout)}
        local.update(kl=kl.cpu(), advantages=advantages.cpu(), returns=returns.cpu(), rank=self.group.rank)
        every = self.group.gather_objects([local])
        if self.group.is_main:
            out = self.run_dir / "rollouts"
            out.mkdir(exist_ok=True)
            torch.save(every, out / f"step-{self.step + 1}.pt")

    def across_processes(self, loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The micro-batch loss whose process-average (what DDP/FSDP/DeepSpeed apply) is the token
        mean over every process's tokens: scale this process's token mean by n_local·W / n_global."""
        if self.group.world_size == 1:
            return loss
        n_local = mask.sum()
        return loss * (n_local * self.group.world_size / self.group.sum(n_local.detach()).clamp(min=1))

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        if self.group.sharded or self.accelerator.mixed_precision == "fp16":
            norm = self.accelerator.clip_grad_norm_(self.trained_params, max_norm)  # sharded grads / unscaling
            return torch.as_tensor(math.nan if norm is None else norm, dtype=torch.float32)
        return torch.nn.utils.clip_grad_norm_(self.trained_params, max_norm, foreach=True)  # DDP: grads already all-reduced

    def token_weighted(self, means: dict[str, float], tokens: float) -> dict[str, float]:
        """Per-process update statistics → one value per key, weighted by each process's token count."""
        if self.group.world_size == 1:
            return means
        keys = sorted(means)
        local = torch.tensor([[means[k] if math.isfinite(means[k]) else 0.0 for k in keys], [tokens * math.isfinite(means[k]) for k in keys]],
                             dtype=torch.float64, device=self.device)
        local[0] *= local[1]
        total = self.group.sum(local)
        return {k: (total[0, i] / total[1, i]).item() if total[1, i] > 0 else math.nan for i, k in enumerate(keys)}

    # ---- the loop ---------------------------------------------------------------------------------
    def train(self) -> list[dict]:
        from policyshift.analysis.live import LiveAnalysis
        from policyshift.progress import StepProgress

        cfg = self.cfg
        self.sink.log_config(cfg.to_dict())
        from rich.console import Console

        console = Console(stderr=True, quiet=not self.group.is_main)  # every process runs the loop; one speaks
        self.analysis = LiveAnalysis(self, console)
        if self.resumed_from is None:
            self.analysis.evaluate(step=0, reference=True)
        stop_reason = None
        with StepProgress(cfg.train.steps, start=self.step, console=console) as progress, stop_on_signals(self):
            while self.step < cfg.train.steps and stop_reason is None and not self.signalled():
                metrics = self.ppo_step()
                fault_point("kill_after_step", self.step)
                progress.update(self.step, metrics)
                evaluate_now = bool(cfg.analysis.every) and self.step % cfg.analysis.every == 0
                stop_reason = self.analysis.after_step(self.step, evaluate=evaluate_now or self.step == cfg.train.steps)
                if cfg.train.save_every and self.step % cfg.train.save_every == 0 and self.step < cfg.train.steps:
                    self.save_checkpoint()  # after the analysis: a checkpoint holds everything of its step
        if stop_reason or self.stop_signal:
            why = stop_reason or f"signal {signal.Signals(self.stop_signal).name}"
            progress.console.print(f"[bold red]stopping at step {self.step}: {why}[/]")
            if stop_reason and not self.analysis.evaluated(self.step):
                self.analysis.evaluate(self.step)
        state = self.save_checkpoint()
        if not self.stop_signal:
            self.save_final(state)
        if self.group.is_main:
            from policyshift.analysis.report import build_report

            build_report(self.run_dir)  # the sinks' close() uploads it where they keep artifacts
        self.sink.close()
        self.group.barrier()
        return self.history

    def close(self) -> None:
        """Leave the process group while Python is fully alive. The DDP wrapper (and accelerate's list of
        prepared objects) hold the gloo/NCCL group: left to interpreter shutdown, its worker threads free
        tensors after the GIL is gone and the process aborts (SIGABRT) after a finished run."""
        self.group.barrier()
        self.train_model = None
        self.accelerator.free_memory()  # drops accelerate's references to the prepared model/optimizer, runs gc
        self.accelerator.end_training()  # destroy_process_group

    def signalled(self) -> bool:
        """A SIGINT/SIGTERM reached any process: all of them stop at the same step."""
        if self.group.any(self.stop_signal is not None):
            self.stop_signal = self.stop_signal or signal.SIGTERM
            return True
        return False

    # ---- outputs ----------------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        return {
            "step": self.step,
            "episodes": self.episodes,
            "skipped_updates": self.skipped_updates,
            "kl_controller": self.kl_ctl.state_dict(),
            "sampler": self.sampler.state_dict(),
            "reward_moments": self.moments.state_dict() if self.moments else None,
        }

    def save_checkpoint(self) -> dict | None:
        """The main process writes it (with every process's generator states); the others wait. Under
        FSDP / DeepSpeed every process first takes part in gathering the weights (and optimizer state)
        onto the main process; that state is returned for final/ to reuse (None otherwise)."""
        generators = self.group.gather_objects([{"sampler": self.generator.get_state(), "shuffle": self.shuffle_gen.get_state()}])
        state = None
        if self.group.sharded:
            engine_dir = self.run_dir / "checkpoints" / f".engine-step-{self.step}"  # DeepSpeed's own per-process files
            if self.group.is_main:
                shutil.rmtree(engine_dir, ignore_errors=True)  # left by a kill during an earlier save
            self.group.barrier()
            state = gather_state(self.accelerator, self.train_model, self.optimizer, engine_dir)
            self.group.barrier()  # every process has written its part
        if self.group.is_main:
            save_checkpoint(self.run_dir, self.step, self.models, self.tokenizer, self.optimizer, self.scheduler,
                            self.trainer_state(), generators, self.cfg.train.keep_last_n, sharded=state)
        self.group.barrier()
        return state

    def save_final(self, state: dict | None = None) -> Path:
        """final/: the policy and tokenizer at the top (load it with from_pretrained(final/)), critic in final/critic.
        With LoRA final/ holds the adapter (peft format; from_pretrained(final/) loads the base it names and applies
        it), and with model.lora.save_merged final/merged/ the adapter merged into a plain model. `state`: the
        gathered weights of a sharded run (save_checkpoint's); the main process writes."""
        out = self.run_dir / "final"
        if self.group.is_main:
            save_models(out, self.models, self.tokenizer, policy_subdir="", state_dict=state and state["model"])
            if self.cfg.model.lora.r > 0 and self.cfg.model.lora.save_merged:
                from policyshift.lora import save_merged

                save_merged(self.models.policy, self.tokenizer, out / "merged")
        return out
