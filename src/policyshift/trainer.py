"""PPOTrainer: rollout → rewards + KL → advantages → clipped policy-gradient updates, one step at a time.

Each step (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022; Shao et al. 2024 for groups):
  1. sample n responses y ~ π_θ(·|x) for each of batch_size / n prompts x, recording log π_old, log π_ref
     (and V_old with a critic);
  2. score: s = RM(x, y) (or a Python function), minus the missing-EOS penalty, normalized/clipped;
  3. advantages from the registry entry algorithm.advantage (policyshift.advantages): GAE with a critic,
     or a group/batch baseline without one; KL is −β·KL_t in the per-token reward or a loss term;
  4. `ppo.epochs` passes over shuffled minibatches: clipped surrogate (+ clipped value loss with a critic);
  5. the KL controller updates β from the batch's sequence KL.
The engine (DDP/FSDP/DeepSpeed) stays behind policyshift.runtime.Runtime.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import shutil
import signal
import threading
import time
from collections import defaultdict
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from policyshift import keys as K
from policyshift.advantages import AdvantageInputs, get_estimator, group_has_signal
from policyshift.checkpoint import restore_checkpoint, restore_newest_intact, save_checkpoint, save_models, wait_for_checkpoints
from policyshift.checks import check_named_inputs, check_vocabularies, fit_prompt_length, model_context, prompt_budget  # noqa: F401 (fit_prompt_length: old import path)
from policyshift.config import ConfigError, PPOConfig, require_runnable, validate
from policyshift.chat import check_chat_fits, end_of_turn_ids
from policyshift.data import DataError, PromptRow, PromptSampler, load_prompt_rows, render_rows, split_fixed_prompts
from policyshift.distributed import (ProcessGroup, configure_sharding, gather_rollout, gather_state, global_numel, load_state, local_numel,
                                     lost_peer_message, make_accelerator, whole_model_loading, whole_weights)
from policyshift.engines import make_engine
from policyshift.faults import fault_point
from policyshift.runtime import Runtime
from policyshift.sampling import GroupPool
from policyshift.kl import kl_estimate, make_kl_controller
from policyshift.losses import (LossNormalizer, aggregate_loss, entropy_bonus, explained_variance, mismatch_weights, policy_loss, sequence_policy_loss,
                                value_loss)
from policyshift.manifest import write_manifest
from policyshift.masked import masked_sum
from policyshift.metrics import advantage_metrics, rollout_metrics
from policyshift.models import build_training_models, load_causal_lm, load_tokenizer
from policyshift.rewards import FunctionReward, ModelReward, RunningMoments, check_finite, make_reward, postprocess_scores, score_rollout
from policyshift.rollout import Rollout, generate_rollout
from policyshift.rundir import RunDirError, discard_new_outputs, prepare_run_dir  # noqa: F401 (RunDirError: part of the trainer's API)
from policyshift.tracking import make_sinks
from policyshift.tracking.jsonl import truncate_run_logs
from policyshift.analysis.runlog import History, resumed_history
from policyshift.errors import TrainingError  # noqa: F401 (defined in errors.py; old import path)


# the policy losses' stats → their metric keys
POLICY_STAT_KEYS = {"clip_frac": K.CLIP_FRAC, "clip_frac_low": K.CLIP_FRAC_LOW, "clip_frac_high": K.CLIP_FRAC_HIGH, "dual_clip_frac": K.DUAL_CLIP_FRAC,
                    "approx_kl": K.APPROX_KL, "ratio_mean": K.RATIO_MEAN, "ratio_var": K.RATIO_VAR, "seq_ratio_mean": K.SEQ_RATIO_MEAN,
                    "seq_ratio_min": K.SEQ_RATIO_MIN, "seq_ratio_max": K.SEQ_RATIO_MAX, "seq_clip_frac": K.SEQ_CLIP_FRAC}


MISMATCH_STAT_KEYS = {"is_ratio_min": K.MISMATCH_IS_MIN, "is_ratio_mean": K.MISMATCH_IS_MEAN, "is_ratio_max": K.MISMATCH_IS_MAX,
                      "masked_frac": K.MISMATCH_MASKED_FRAC}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


LAUNCHER_REPEAT_S = 5.0


@contextlib.contextmanager
def stop_on_signals(trainer):
    """SIGINT/SIGTERM: finish the current step, checkpoint, stop. A second signal interrupts at once — except, with
    several processes, one within LAUNCHER_REPEAT_S of the first: torchrun's agent sends its SIGTERM more than
    once when a process has died, and the survivor must live to report which one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first_at = []

    def handler(signum, frame):
        now = time.monotonic()
        if trainer.group.world_size > 1:
            if not first_at:
                trainer.stop_signal, first_at[:] = signum, [now]
                return
            if now - first_at[0] < LAUNCHER_REPEAT_S:
                return
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
            return
        trainer.stop_signal = signum
        signal.signal(signum, previous[signum])  # the next one acts immediately

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    failing = False
    try:
        yield
    except BaseException:
        failing = True
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if failing:
            ignore_launcher_sigterm(trainer.group)


def ignore_launcher_sigterm(group) -> None:
    """One of several processes, failing: the launcher SIGTERMs every process once one has died, and this one, already
    on its way out, must live to say which rank died (the default action would end it silently, before its line).
    Ignored process-wide: a signal sent to the process reaches any of its threads (gloo's, the writers')."""
    if group.world_size > 1 and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


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
    b, n, p = cfg.rollout.batch_size, cfg.rollout.num_generations, cfg.ppo
    if b % world_size or (b // world_size) % (p.num_minibatches * p.grad_accum_steps):
        raise ConfigError(f"rollout.batch_size ({b}) must split into {world_size} processes × ppo.num_minibatches ({p.num_minibatches}) "
                          f"× ppo.grad_accum_steps ({p.grad_accum_steps})")
    if (b // n) % world_size:  # a group never spans processes: each takes whole prompts, n samples each
        raise ConfigError(f"rollout.batch_size / rollout.num_generations ({b} / {n} = {b // n} prompts) must split evenly into {world_size} processes")
    if cfg.rollout.engine == "vllm":
        raise ConfigError("rollout.engine=vllm runs inside a single training process; use rollout.engine=hf under accelerate launch")
    if cfg.reward.on_nonfinite == "skip":
        raise ConfigError("reward.on_nonfinite=skip needs a single process (dropped episodes would unbalance the processes); use error")


class PPOTrainer:
    """`PPOTrainer(PPOConfig(...)).train()`. Models, tokenizer, reward and prompts load from the
    config; any of them may instead be passed in as objects (a reward as f(prompts, responses))."""

    def __init__(self, config: PPOConfig, *, policy=None, tokenizer=None, reward=None, ref_policy=None, prompts=None, resume: bool = False):
        validate(config)
        require_runnable(config, policy is not None, prompts is not None, reward is not None)
        # every path the config names, there before the first model loads (the prompts are read after them all)
        m, r, a = config.model, config.reward, config.analysis
        check_named_inputs(models=[None if policy is not None else m.policy, None if ref_policy is not None else m.reference, m.critic,
                                   None if tokenizer is not None else m.tokenizer],
                           prompts=[None if prompts is not None else config.data.prompts, a.prompts],
                           rewards=[(None, None) if reward is not None else (r.model, r.function), (a.gold_reward_model, a.gold_reward_function)])
        self.cfg = cfg = config
        self.estimator = get_estimator(cfg.algorithm.advantage)  # what it needs (critic, groups) is asked of it, not of its name
        self.accelerator = make_accelerator(cfg.train.device, cfg.train.mixed_precision, cfg.train.collective_timeout_s)
        self.group = group = ProcessGroup(self.accelerator)  # one process: every collective is the identity
        check_world_size(cfg, group.world_size)
        configure_sharding(self.accelerator, cfg)
        self.run_dir = Path(cfg.train.output_dir)
        # the main process owns the directory (lock) and checks its state; train.output_dir as given ('' is refused)
        self.run_lock = prepare_run_dir(cfg.train.output_dir, cfg.train.overwrite, resume, cfg.train.steps) if group.is_main else None
        self._resuming, self._checkpointed, self.sink = resume, False, None
        with self._outputs_left_consistent():
            group.barrier()
            self._build(policy, tokenizer, reward, ref_policy, prompts, resume)

    @contextlib.contextmanager
    def _outputs_left_consistent(self):
        """An error before this run's first checkpoint leaves the output directory as it was (a new run's files
        removed); after it, the run directory stays resumable. The error comes out as one line where it can."""
        try:
            yield
        except BaseException as exc:
            if self._checkpointed:  # a checkpoint's manifest still hashing in the background: let it complete
                with contextlib.suppress(Exception):
                    wait_for_checkpoints()
            self._discard_outputs()
            self._raise_one_line(exc)
            raise

    def _raise_one_line(self, exc: BaseException) -> None:
        """Another process of the run died or went silent (a failed collective), or the run's files cannot be written
        (disk full): one TrainingError line naming the rank or the file, and what is left in the run directory,
        instead of the backend's error."""
        ignore_launcher_sigterm(self.group)
        message = lost_peer_message(self.group, exc, self.cfg.train.collective_timeout_s)
        if message is None and isinstance(exc, OSError) and exc.errno is not None:  # the disk (full, gone read-only) under the record
            where = f" {exc.filename}" if exc.filename else f" in {self.run_dir}"
            message = f"cannot write{where}: {exc.strerror or exc}"
        if message is None:
            return
        from policyshift.checkpoint import list_checkpoints

        ckpts = list_checkpoints(self.run_dir) if self.run_dir.is_dir() else []
        left = (f"the run is resumable from {ckpts[-1].name}: policyshift train --resume {self.run_dir}" if ckpts
                else "no checkpoint yet: start the run again")
        raise TrainingError(f"{message}; {left}") from exc

    def _discard_outputs(self) -> None:
        """A new run that fails before its first checkpoint leaves its output directory as it was (the main
        process removes what the run added: config.yaml, tb/, the logs); a later failure leaves it resumable."""
        if self.run_lock is None or self._resuming or self._checkpointed:
            return
        if self.sink is not None:
            with contextlib.suppress(Exception):
                self.sink.close()  # TensorBoard's writer holds tb/ open
        discard_new_outputs(self.run_lock)

    def _build(self, policy, tokenizer, reward, ref_policy, prompts, resume: bool) -> None:
        cfg, group = self.cfg, self.group
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
            self.models, self.ref_policy, self.critic_source = build_training_models(m, policy, ref_policy, self.reward, cfg.reward.model, self.tokenizer,
                                                                                     with_critic=self.estimator.needs_critic)
        check_vocabularies(policy, self.tokenizer, self.ref_policy, m)
        # fail now, not at the first rollout: an end-of-turn id the tokenizer does not know, a reward rendering the
        # tokenizers cannot give
        end_of_turn_ids(self.models.policy, self.tokenizer)
        for r in (self.reward, self.gold_reward):
            if isinstance(r, ModelReward):
                r.rendering(self.tokenizer)
        self.models.to(self.device)
        self.ref_policy.to(self.device)
        if m.gradient_checkpointing:
            for module in (self.models.policy, self.models.critic):
                if module is not None:
                    enable_activation_checkpointing(module)

        # rows: each prompt with its other fields (reward functions get them as keyword arguments)
        # chat rows ({"messages": [...]}) are rendered here, once, with the policy's tokenizer (policyshift.chat)
        all_rows = (render_rows([p if isinstance(p, PromptRow) else PromptRow(p) for p in prompts], self.tokenizer, "prompts") if prompts is not None
                    else load_prompt_rows(cfg.data.prompts, cfg.data.prompt_field, cfg.data.split, self.tokenizer))
        if cfg.analysis.prompts:
            self.train_rows, self.fixed_rows = all_rows, load_prompt_rows(cfg.analysis.prompts, cfg.data.prompt_field, tokenizer=self.tokenizer)
        else:
            self.train_rows, held = split_fixed_prompts(all_rows, cfg.analysis.num_prompts, cfg.train.seed)
            first_row = {row.text: row for row in reversed(all_rows)}
            self.fixed_rows = [first_row[text] for text in held]
        self.fixed_prompts = [row.text for row in self.fixed_rows]
        if not self.train_rows:
            raise DataError("no training prompts left after holding out the fixed analysis prompts")
        self.field_names = sorted({k for row in self.train_rows for k in row.fields})
        # each step draws batch_size / n prompts and samples every one n times
        self.sampler = PromptSampler(self.train_rows, cfg.rollout.batch_size // cfg.rollout.num_generations, cfg.train.seed, cfg.data.shuffle)
        # an over-long chat prompt is an error: found before the warning that plain prompts are cut from the left
        check_chat_fits(all_rows + self.fixed_rows, self.tokenizer, prompt_budget(cfg.data.max_prompt_length, cfg.rollout.max_new_tokens,
                        model_context(policy.config), "rollout.max_new_tokens"), cfg.data.prompts or "prompts")
        self.max_prompt_length = fit_prompt_length(policy, self.tokenizer, [r.text for r in all_rows] + self.fixed_prompts, cfg.data.max_prompt_length,
                                                   cfg.rollout.max_new_tokens)

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
        self.runtime = Runtime(self.accelerator, group, self.train_model, self.trained_params, p.grad_accum_steps)
        from transformers import get_scheduler

        name = {"constant": "constant_with_warmup"}.get(p.lr_scheduler, p.lr_scheduler)
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=p.warmup_steps, num_training_steps=cfg.train.steps * p.epochs * p.num_minibatches)
        self.kl_ctl = make_kl_controller(cfg.kl.controller, cfg.kl.beta, cfg.kl.target, cfg.kl.horizon)
        self.moments = RunningMoments() if cfg.reward.normalize else None
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.train.seed + group.rank)  # sampling: each process its own episodes
        self.shuffle_gen = torch.Generator().manual_seed(cfg.train.seed + 1)  # minibatch order
        self.step, self.episodes, self.skipped_updates, self.consecutive_skips = 0, 0, 0, 0
        self.history: list[dict] = History()  # its columns kept as it grows: the live detectors read it at every evaluation
        self.distributions: list[dict] = []  # per-sample values of each step, for the detectors
        self.logged_samples, self.logged_findings = [], []  # a resumed run's, up to its checkpoint (for LiveAnalysis)
        self.reference_probes: dict = {}  # a resumed run's step-0 probe scores
        self.resumed_from: Path | None = self._resume() if resume else None
        # The sampler: the training policy itself (hf), or vLLM synced after every update; built after a
        # resume so it starts from the restored weights.
        self.engine = make_engine(cfg.rollout, self.models.policy, self.tokenizer, seed=cfg.train.seed,
                                  max_model_len=self.max_prompt_length + cfg.rollout.max_new_tokens, trust_remote_code=m.trust_remote_code)
        self.stop_signal: int | None = None
        from rich.console import Console

        from policyshift.analysis.live import LiveAnalysis

        self.console = Console(stderr=True, quiet=not group.is_main)  # every process runs the loop; one speaks
        # the probe suites (files, scorers) load here: checked before the run writes anything
        self.analysis = LiveAnalysis(self.training_view(), self.console)
        self.sink = make_sinks(self.run_dir, cfg, is_main_process=group.is_main, resume_step=self.step if resume else None)

    def _resume(self) -> Path:
        """Continue from the latest complete checkpoint: weights, optimizer, scheduler, β, data
        position, reward moments, every RNG; the logs are cut back to that step."""
        load_sharded = (lambda *a: load_state(self.accelerator, self.train_model, self.optimizer, *a)) if self.group.sharded else None
        ckpt, state = restore_newest_intact(self.run_dir, lambda c: restore_checkpoint(
            c, self.models, self.optimizer, self.scheduler, {"sampler": self.generator, "shuffle": self.shuffle_gen},
            self.group.rank, self.group.world_size, load_sharded), self.group)
        self.step, self.episodes, self.skipped_updates = state["step"], state["episodes"], state["skipped_updates"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.sampler.load_state_dict(state["sampler"])
        if self.moments is not None and state["reward_moments"]:
            self.moments.load_state_dict(state["reward_moments"])
        logs = truncate_run_logs(self.run_dir, self.step, write=self.group.is_main)
        self.group.barrier()  # every process reads the logs the main one has cut back
        history, self.reference_probes = resumed_history(logs["metrics"])
        self.history = History(history)
        self.distributions = logs["distributions"]
        self.logged_samples, self.logged_findings = logs["samples"], logs["findings"]
        return ckpt

    def _make_reward(self, obj, model_path, function_spec):
        if obj is not None:
            return obj if hasattr(obj, "tokenizer") or isinstance(obj, FunctionReward) else FunctionReward(obj, "reward callable")
        if model_path is None and function_spec is None:
            return None
        rc = self.cfg.reward  # (the gold reward model reads the same rendering as the proxy)
        r = make_reward(model_path, function_spec, self.cfg.model.dtype, self.cfg.model.trust_remote_code, rc.batch_size, rc.max_length, rc.template, rc.keep_eos)
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

    # ---- one step ---------------------------------------------------------------------------------
    def draw_rows(self, round_index: int = 0) -> tuple[list, torch.Tensor]:
        """This process's episodes of the next step: its contiguous share of the batch_size / n prompts every
        process drew identically, each repeated n times (adjacent), so a group never spans processes; and
        each row's group id (unique over processes and over the rounds of dynamic sampling)."""
        n = self.cfg.rollout.num_generations
        local = self.group.local_slice(self.sampler.next_batch())
        first_group = (round_index * self.group.world_size + self.group.rank) * len(local)
        group_ids = torch.arange(first_group, first_group + len(local), device=self.device).repeat_interleave(n)
        return [row for row in local for _ in range(n)], group_ids

    def score(self, rollout: Rollout, fields: dict[str, list], moments=None) -> tuple[Rollout, dict[str, list], torch.Tensor]:
        """The rollout with its scores (and the prompt-row fields of the episodes kept), and the raw scores. With
        reward.on_nonfinite=skip an episode whose reward is NaN/inf is dropped — with its whole group: a
        group's baseline needs all of its n samples. `moments`: the reward normalizer to update and apply
        (default self.moments; dynamic sampling passes a copy, see sample_episodes)."""
        raw = score_rollout(self.reward, rollout, fields, self.tokenizer).to(self.device)
        r = self.cfg.reward
        finite = torch.isfinite(raw)
        if self.group.any(not bool(finite.all())):
            if r.on_nonfinite == "error":  # (skip runs in one process only: check_world_size)
                check_finite(raw, rollout.prompts, rollout.responses, "reward")
                raise TrainingError("the reward was non-finite on another process; its error names the episode")
            whole_group = torch.isin(rollout.group_ids, rollout.group_ids[~finite], invert=True)
            if not bool(whole_group.any()):
                check_finite(raw, rollout.prompts, rollout.responses, "reward (every group of the batch)")
            keep = whole_group.nonzero().flatten().cpu()
            rollout, raw = rollout.select(keep), raw[keep.to(raw.device)]
            fields = {k: [v[i] for i in keep.tolist()] for k, v in fields.items()}
        # Normalization statistics are the whole batch's: every process post-processes all scores, keeps its own.
        return replace(rollout, scores=self.postprocess(raw, rollout.has_eos, self.moments if moments is None else moments)), fields, raw

    def postprocess(self, raw: torch.Tensor, has_eos: torch.Tensor, moments) -> torch.Tensor:
        """This process's scores after the missing-EOS penalty, normalization (`moments`, updated) and clipping."""
        r = self.cfg.reward
        scores = postprocess_scores(self.group.gather_rows(raw), self.group.gather_rows(has_eos), r.missing_eos_penalty, moments, r.clip)
        return scores[self.group.rank * len(raw) : (self.group.rank + 1) * len(raw)]

    def sample_round(self, round_index: int, seconds: dict, moments=None) -> tuple[Rollout, dict[str, list], torch.Tensor, int]:
        """One generation round: draw prompts, sample n responses each, score them. → (rollout, row fields, raw scores,
        episodes dropped for a non-finite reward); `seconds` accumulates generation and scoring time."""
        t0 = time.perf_counter()
        rows, group_ids = self.draw_rows(round_index)
        prompts, fields = [row.text for row in rows], {k: [row.fields.get(k) for row in rows] for k in self.field_names}
        with self.accelerator.autocast(), self.whole_weights():  # autocast: the update's precision, so ratios start at 1
            rollout = generate_rollout(self.models, self.ref_policy if self.cfg.kl.score_reference else None, self.tokenizer, prompts,
                                       self.rollout_config, self.max_prompt_length, self.generator, engine=self.engine)
        t1 = time.perf_counter()
        scored, fields, raw = self.score(replace(rollout, group_ids=group_ids), fields, moments)
        seconds["generate"] += t1 - t0
        seconds["score"] += time.perf_counter() - t1
        return scored, fields, raw, len(rollout) - len(scored)

    def sample_episodes(self, seconds: dict) -> tuple[Rollout, dict[str, list], dict]:
        """This step's scored episodes. With algorithm.dynamic_sampling, groups whose advantages would all be 0 are
        dropped and further rounds sampled until the batch is full again (policyshift.sampling). → (rollout, fields, metrics)."""
        a = self.cfg.algorithm
        if not a.dynamic_sampling:
            rollout, fields, _, skipped = self.sample_round(0, seconds)
            return rollout, fields, {K.NONFINITE_SKIPPED: skipped}
        # Each round is scored with a throw-away copy of the normalizer (its groups are judged on scores as they
        # would be normalized); the real one is updated once, from the episodes kept, and the batch rescored with it.
        provisional = lambda: copy.deepcopy(self.moments)  # noqa: E731  (None without reward.normalize)
        pool = GroupPool(need=self.cfg.rollout.batch_size // self.cfg.rollout.num_generations // self.group.world_size)
        rounds, skipped = 0, 0
        while rounds == 0 or (rounds < a.max_sampling_rounds and self.group.any(not pool.full)):  # every process runs as many rounds
            rollout, fields, raw, more = self.sample_round(rounds, seconds, provisional())
            pool.add(rollout, fields, group_has_signal(self.estimator, self.advantage_inputs(rollout)), raw)
            rounds, skipped = rounds + 1, skipped + more
        rollout, fields, raw, flat_kept = pool.batch()
        rollout = replace(rollout, scores=self.postprocess(raw, rollout.has_eos, self.moments))
        counts = self.group.sum(torch.tensor([float(skipped), float(pool.n_flat - flat_kept), float(flat_kept)], device=self.device))
        return rollout, fields, {K.NONFINITE_SKIPPED: skipped, K.SAMPLING_ROUNDS: rounds, K.SAMPLING_DROPPED_GROUPS: counts[1].item(),
                                 K.SAMPLING_FLAT_GROUPS_KEPT: counts[2].item()}

    def advantage_inputs(self, rollout: Rollout) -> AdvantageInputs:
        """What the estimator reads of a scored rollout: per-token KL (kl.estimator; 0 without a reference), β when
        the KL is in the reward (0 as a loss term), the ppo/algorithm settings, sums over every process."""
        cfg, mask = self.cfg, rollout.response_mask
        kl = kl_estimate(cfg.kl.estimator, rollout.logprobs, rollout.ref_logprobs) if rollout.ref_logprobs is not None else torch.zeros_like(mask)
        a, p = cfg.algorithm, cfg.ppo
        return AdvantageInputs(scores=rollout.scores, kl=kl, beta=self.kl_ctl.beta if cfg.kl.placement == "reward" else 0.0, mask=mask,
                               group_ids=rollout.group_ids, values=rollout.values, gamma=p.gamma, lam=p.lam, whiten=p.whiten_advantages,
                               scale=a.scale, std_eps=a.std_eps, all_sum=self.group.sum)

    def ppo_step(self) -> dict:
        """rollout → rewards (+ KL) → advantages (algorithm.advantage) → update → metrics."""
        cfg, t0, seconds = self.cfg, time.perf_counter(), defaultdict(float)
        rollout, fields, sampling_stats = self.sample_episodes(seconds)
        t_sampled = time.perf_counter()
        gold = score_rollout(self.gold_reward, rollout, fields, self.tokenizer) if self.gold_reward else None
        t_score = time.perf_counter()

        mask, beta = rollout.response_mask, self.kl_ctl.beta
        correction = {}
        if rollout.engine_logprobs is not None and cfg.algorithm.mismatch_correction != "none":  # an engine with its own weights
            weights, mstats = mismatch_weights(rollout.logprobs, rollout.engine_logprobs, mask, cfg.algorithm.mismatch_correction,
                                               cfg.algorithm.mismatch_cap)
            rollout = replace(rollout, is_weights=weights)
            correction = {key: float(mstats[name]) for name, key in MISMATCH_STAT_KEYS.items()}
        x = self.advantage_inputs(rollout)
        kl = x.kl if rollout.ref_logprobs is not None else None  # no reference scored (kl.score_reference false, β = 0): no KL at all
        in_reward = cfg.kl.placement == "reward"
        advantages, returns = self.estimator.compute(x)
        update_stats = self.update(rollout, advantages, returns, beta)
        self.engine.sync_weights(self.models.policy)  # a separate engine samples the next batch from the new weights
        t_update = time.perf_counter()
        if cfg.train.save_rollouts:
            self.save_rollouts(rollout, kl, advantages, returns)

        # Metrics and the KL controller see the whole batch: every process's episodes, gathered.
        g = self.group
        rollout, advantages = gather_rollout(rollout, g), g.gather_rows(advantages)
        kl, returns = (g.gather_rows(x) if x is not None else None for x in (kl, returns))
        gold = g.gather_rows(gold.to(self.device)) if gold is not None else None
        mask = rollout.response_mask
        seq_kl = masked_sum(kl, mask, 1) if kl is not None else None
        if seq_kl is not None:
            self.kl_ctl.update(seq_kl.mean().item(), len(rollout))  # Ziegler: β follows the sequence KL
        self.step, self.episodes = self.step + 1, self.episodes + len(rollout)
        metrics = {
            K.EPISODES: self.episodes,
            **sampling_stats,
            **correction,
            **rollout_metrics(rollout, kl, beta, beta if in_reward else 0.0),
            **advantage_metrics(advantages, mask, rollout.scores, rollout.group_ids, cfg.rollout.num_generations),
            **update_stats,
            K.TIME_GENERATE: seconds["generate"],
            K.TIME_SCORE: seconds["score"] + (t_score - t_sampled),  # + the gold scorer
            K.TIME_UPDATE: t_update - t_score,
            K.TIME_STEP: t_update - t0,
            K.TOKENS_PER_S: (rollout.query_mask.sum() + mask.sum()).item() / (t_update - t0),
            **self.parallel_metrics(),
        }
        if returns is not None:
            metrics[K.VALUE_EXPLAINED_VARIANCE] = explained_variance(rollout.values, returns, mask).item()
        if gold is not None:
            metrics[K.GOLD_MEAN] = gold.float().mean().item()
            metrics[K.GOLD_STD] = gold.float().std().item() if len(gold) > 1 else 0.0
        self.sink.log_scalars(metrics, self.step)
        distribution = {"scores": rollout.scores.tolist(), "seq_kl": seq_kl.tolist() if seq_kl is not None else None,
                        "lengths": rollout.lengths.tolist(), "gold_scores": gold.tolist() if gold is not None else None}
        self.sink.log_histograms(distribution, self.step)
        self.distributions.append({"step": self.step, **distribution})
        self.history.append({"step": self.step, **metrics})
        return metrics

    def update(self, batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor | None, beta: float) -> dict:
        """ppo.epochs passes over shuffled minibatches; each minibatch one optimizer step over its micro-batches.
        Groups need no care here: their advantages were computed on the whole batch before any shuffling."""
        p, stats, skipped = self.cfg.ppo, defaultdict(list), 0
        self.runtime.step = self.step + 1
        if self.cfg.model.gradient_checkpointing:
            self.models.train()  # HF checkpoints activations only in train mode; dropout is already 0 everywhere
        for _ in range(p.epochs):
            # tensor_split, not split: episodes dropped for a non-finite reward leave uneven minibatches
            for mb_index in torch.randperm(len(batch), generator=self.shuffle_gen).tensor_split(p.num_minibatches):
                self.optimizer.zero_grad(set_to_none=True)
                micro_batches = [i for i in mb_index.tensor_split(p.grad_accum_steps) if len(i)]
                norm = self.loss_normalizer(batch.response_mask[mb_index])
                for j, index in enumerate(micro_batches):
                    last = j == len(micro_batches) - 1  # gradients are all-reduced once, after the last micro-batch
                    if self.cfg.algorithm.loss_aggregation == "micro_batch_token_mean":
                        norm = replace(norm, tokens=self.group.sum(batch.response_mask[index].sum()) * len(micro_batches))
                    with self.runtime.accumulating(last):
                        loss, mb_stats = self.micro_batch_loss(batch.select(index), advantages[index],
                                                               returns[index] if returns is not None else None, beta, norm)
                        self.runtime.backward(loss, last)
                    for k, v in mb_stats.items():
                        stats[k].append(float(v.detach()))
                grad_norm, stepped = self.runtime.finish_update(p.max_grad_norm or math.inf, self.optimizer)
                stats[K.GRAD_NORM].append(grad_norm.item())
                skipped += not self.after_update(stepped)
        self.models.eval()
        self.skipped_updates += skipped
        finite_mean = lambda v: float(np.mean(f)) if len(f := [x for x in v if math.isfinite(x)]) else math.nan  # noqa: E731
        # every epoch visits each episode once: the statistics stand for epochs × this process's tokens
        out = self.runtime.token_weighted({k: finite_mean(v) for k, v in stats.items()}, p.epochs * float(batch.response_mask.sum()), self.device)
        return {**out, K.LR: self.scheduler.get_last_lr()[0], K.SKIPPED_UPDATES: skipped}

    def loss_normalizer(self, minibatch_mask: torch.Tensor) -> LossNormalizer:
        """The minibatch's sizes over every process, which each micro-batch's share of the loss divides by."""
        return LossNormalizer(tokens=self.group.sum(minibatch_mask.sum()),
                              sequences=self.group.sum(torch.tensor(float(len(minibatch_mask)), device=minibatch_mask.device)),
                              max_new_tokens=self.cfg.rollout.max_new_tokens)

    def micro_batch_loss(self, mb: Rollout, advantages: torch.Tensor, returns: torch.Tensor | None, beta: float, norm: LossNormalizer):
        """L = clipped surrogate (per token, or GSPO's per sequence) (+ vf_coef · clipped value loss, with a critic)
        − ent_coef · entropy (+ β · the kl.estimator term with kl.placement loss: k2's gradient is ∇KL(π_θ‖π_ref),
        k3's ∇KL(π_ref‖π_θ), as in TRL and verl; policyshift.kl), each aggregated as algorithm.loss_aggregation
        says: this micro-batch's share of the minibatch loss. → (loss share, stats)."""
        p, a, T = self.cfg.ppo, self.cfg.algorithm, self.cfg.rollout.temperature
        aggregate = partial(aggregate_loss, mode=a.loss_aggregation, norm=norm)
        weights = mb.is_weights[:, : int(mb.lengths.max().clamp(min=1))] if mb.is_weights is not None else None
        # Drop columns that are padding in every row of this micro-batch: trailing response
        # columns and leading prompt columns (positions come from the mask, so this is exact).
        R = int(mb.lengths.max().clamp(min=1))
        first = int(mb.query_mask.any(0).long().argmax())
        mask, response_ids = mb.response_mask[:, :R], mb.response_ids[:, :R]
        input_ids = torch.cat([mb.query_ids[:, first:], response_ids], 1)
        attention_mask = torch.cat([mb.query_mask[:, first:], mask.long()], 1)
        # logprobs and entropy chunk by chunk over tokens (rollout.logit_chunk_size): no (B, R, V) logits; the
        # entropy is only logged (no backward through it) when there is no bonus
        with_entropy = p.ent_coef > 0 or self.cfg.rollout.exact_kl
        new_logprobs, token_entropy, values = self.train_model(input_ids, attention_mask, response_ids, mask, T, self.cfg.rollout.logit_chunk_size,
                                                               with_entropy, p.ent_coef > 0)
        if a.ratio_level == "sequence":
            loss, pg = sequence_policy_loss(new_logprobs, mb.logprobs[:, :R], advantages[:, :R], mask, a.sequence_clip_range,
                                            a.sequence_clip_range_high, aggregate, weights)
        else:
            loss, pg = policy_loss(new_logprobs, mb.logprobs[:, :R], advantages[:, :R], mask, p.clip_range, p.clip_range_high, p.dual_clip, aggregate,
                                   weights)
        stats = {K.LOSS_POLICY: loss, **{POLICY_STAT_KEYS[name]: value for name, value in pg.items()}}
        if returns is not None:  # an estimator with a critic: its clipped regression to the returns
            vf_loss, vf = value_loss(values, mb.values[:, :R], returns[:, :R], mask, p.clip_range_value, aggregate)
            loss = loss + p.vf_coef * vf_loss
            stats.update({K.LOSS_VALUE: vf_loss, K.VALUE_CLIP_FRAC: vf["clip_frac"]})
        if token_entropy is not None:
            entropy = entropy_bonus(token_entropy, mask, aggregate)
            loss = loss - p.ent_coef * entropy
            stats[K.LOSS_ENTROPY] = entropy
        if self.cfg.kl.placement == "loss" and mb.ref_logprobs is not None:  # GRPO/verl style: β·(k2 or k3) as a loss term
            kl_loss = aggregate(kl_estimate(self.cfg.kl.estimator, new_logprobs, mb.ref_logprobs[:, :R]), mask)
            loss = loss + beta * kl_loss
            stats[K.LOSS_KL] = kl_loss
        return loss, {**stats, K.LOSS_TOTAL: loss}

    def after_update(self, stepped: bool) -> bool:
        """The runtime stepped unless the gradient was non-finite (Runtime.finish_update: a NaN/inf loss or gradient
        never reaches the weights, on any engine); count skips (too many in a row stop the run), and step the
        scheduler after a real update. Returns `stepped`."""
        if not stepped:
            self.consecutive_skips += 1
            if self.consecutive_skips >= self.cfg.train.max_consecutive_skips:
                raise TrainingError(
                    f"{self.consecutive_skips} consecutive updates had a non-finite loss or gradient (step {self.step + 1}); "
                    "lower ppo.lr, set reward.clip/normalize, or check the reward for huge values")
            return False
        self.consecutive_skips = 0
        self.scheduler.step()
        return True

    def parallel_metrics(self) -> dict:
        """Several processes. `parallel/weights_held_fraction`: the share of the trained weights this
        process stores (1 under DDP/ZeRO-2, 1/W under FSDP/ZeRO-3: the sharding is real). DDP keeps a full
        copy per process that must stay identical: `parallel/replica_checksum_spread` is the spread
        (max − min) of a float64 checksum of the trained weights across processes."""
        if self.group.world_size == 1:
            return {}
        held = {K.WEIGHTS_HELD_FRACTION: self.weights_held_fraction}
        if self.group.sharded:
            return held
        checksum = torch.stack([p.detach().double().sum() for p in self.trained_params]).sum()
        sums = self.group.gather_rows(checksum.reshape(1))
        return {**held, K.REPLICA_CHECKSUM_SPREAD: (sums.max() - sums.min()).item()}

    def save_rollouts(self, rollout: Rollout, kl: torch.Tensor | None, advantages: torch.Tensor, returns: torch.Tensor | None) -> None:
        """RUN_DIR/rollouts/step-N.pt (train.save_rollouts): a list with one dict per process, in rank order
        (kl None without a reference pass, returns None without a critic)."""
        cpu = lambda v: v.detach().cpu() if isinstance(v, torch.Tensor) else v  # noqa: E731
        local = {f.name: cpu(getattr(rollout, f.name)) for f in fields(rollout)}
        local.update(kl=cpu(kl), advantages=cpu(advantages), returns=cpu(returns), rank=self.group.rank)
        every = self.group.gather_objects([local])
        if self.group.is_main:
            out = self.run_dir / "rollouts"
            out.mkdir(exist_ok=True)
            torch.save(every, out / f"step-{self.step + 1}.pt")

    # ---- the loop ---------------------------------------------------------------------------------
    def training_view(self):
        """What the live analysis reads of this run (analysis.live.TrainingView): never the trainer itself."""
        from contextlib import contextmanager

        from policyshift.analysis.live import TrainingView
        from policyshift.analysis.probe import fixed_prompt_seed

        @contextmanager
        def precision():  # the update's precision (so ratios start at 1) over the whole weights
            with self.accelerator.autocast(), self.whole_weights():
                yield

        cfg = self.cfg
        return TrainingView(
            config=cfg.to_dict(), models=self.models, reference=self.ref_policy, tokenizer=self.tokenizer, prompts=list(self.fixed_prompts),
            fields={k: [row.fields.get(k) for row in self.fixed_rows] for k in self.field_names},
            rollout=lambda: self.rollout_config, max_prompt_length=self.max_prompt_length, suite_prompt_length=cfg.data.max_prompt_length,
            max_new_tokens=cfg.rollout.max_new_tokens, seed=fixed_prompt_seed(cfg.train.seed), reward=self.reward, gold_reward=self.gold_reward,
            precision=precision, history=lambda: self.history, distributions=lambda: self.distributions, sink=lambda: self.sink,
            probes=tuple(cfg.analysis.probes or ()), stop_on=cfg.analysis.stop_on, logged_samples=tuple(self.logged_samples),
            logged_findings=tuple(self.logged_findings), reference_probes=dict(self.reference_probes))

    def _add_to_row(self, step: int, metrics: dict) -> None:
        """A step's probe scores join that step's row of the history (logged to the sinks by the analysis)."""
        if metrics and self.history and self.history[-1].get("step") == step:
            self.history[-1].update(metrics)

    def train(self) -> list[dict]:
        """The run (see _outputs_left_consistent for what an error leaves behind)."""
        with self._outputs_left_consistent():
            return self._train()

    def _train(self) -> list[dict]:
        from policyshift.progress import StepProgress

        cfg, console = self.cfg, self.console
        self.sink.log_config(cfg.to_dict())
        if self.resumed_from is None:
            self.analysis.evaluate(step=0, reference=True)
        stop_reason = None
        with StepProgress(cfg.train.steps, start=self.step, console=console) as progress, stop_on_signals(self):
            while self.step < cfg.train.steps and stop_reason is None and not self.signalled():
                metrics = self.ppo_step()
                fault_point("kill_after_step", self.step)
                progress.update(self.step, metrics)
                evaluate_now = bool(cfg.analysis.every) and self.step % cfg.analysis.every == 0
                if evaluate_now or self.step == cfg.train.steps:
                    self._add_to_row(self.step, self.analysis.evaluate(self.step))
                # the detectors read the whole history (O(steps) each time): run at the evaluations, not every step
                # (0.7 s a step at 2.5k steps in benchmarks/soak.py); every step only when there are no evaluations
                if evaluate_now or self.step == cfg.train.steps or not cfg.analysis.every:
                    stop_reason = self.analysis.check(self.step)
                if cfg.train.save_every and self.step % cfg.train.save_every == 0 and self.step < cfg.train.steps:
                    self.save_checkpoint()  # after the analysis: a checkpoint holds everything of its step
        if stop_reason or self.stop_signal:
            why = stop_reason or f"signal {signal.Signals(self.stop_signal).name}"
            progress.console.print(f"[bold red]stopping at step {self.step}: {why}[/]", soft_wrap=True)
            if stop_reason and not self.analysis.evaluated(self.step):
                self._add_to_row(self.step, self.analysis.evaluate(self.step))
        state = self.save_checkpoint()
        if not self.stop_signal:
            self.save_final(state)
        if self.group.is_main:
            from policyshift.analysis.report import build_report

            build_report(self.run_dir)  # the sinks' close() uploads it where they keep artifacts
        self.sink.close()
        wait_for_checkpoints()  # the last checkpoint's manifest was hashed in the background: complete on return
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
            self._checkpointed = True  # from here on a failure leaves the run resumable, never removed
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
            write_manifest(out)
        return out
