"""Where policyshift's PPO iteration goes: torch.profiler over a few steady iterations of the
benchmark setting (benchmarks/ppo_vs_trl.py), with each phase labelled.

    python benchmarks/profile_policyshift.py --assets /tmp/ppo-assets --iters 2 --threads 2
    python benchmarks/profile_policyshift.py --experiment cdf_sampling --experiment shared_critic
    python benchmarks/profile_policyshift.py --assets /tmp/ppo-assets --grpo-beta 0     # the GRPO benchmark's step

Prints, per phase: wall time, time inside aten operators (self CPU time summed over the ops that
ran in the phase), the rest (Python, module dispatch, autograd bookkeeping: "overhead"), and the
number of operator calls; then the top operators overall. Set OMP_WAIT_POLICY=PASSIVE on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ppo_vs_trl as bench  # noqa: E402

# the labels main() puts on policyshift's functions; "rollout" and "update" enclose them, "step" encloses all.
# What no label covers (rollout/other, update/other, step/other) is a remainder computed for the table.
PHASES = ["generate", "rollout/ref_forward", "rollout/value_forward", "rollout/reward_forward",
          "update/forward", "update/backward", "update/optimizer"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", default=None)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--experiment", action="append", default=[], choices=sorted(bench.EXPERIMENTS))
    ap.add_argument("--grpo-beta", type=float, default=None, metavar="BETA",
                    help="profile the GRPO benchmark's step (grpo_vs_trl.py: 64 completions, n=8, one update) at this β instead")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--trace", help="write a chrome trace here")
    ns = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import policyshift.rollout as R
    import policyshift.trainer as T
    from policyshift.trainer import PPOTrainer

    torch.set_num_threads(ns.threads)
    assets = bench.build_assets(Path(ns.assets) if ns.assets else Path(tempfile.mkdtemp(prefix="ppo-bench-assets-")))
    for name in ns.experiment:
        bench.EXPERIMENTS[name]()
    if ns.grpo_beta is not None:  # the GRPO benchmark's config and Python reward
        import grpo_vs_trl as grpo

        cfg = grpo.policyshift_config(assets, ns.threads, ns.grpo_beta, tempfile.mkdtemp(prefix="ps-prof-"))
        trainer = PPOTrainer(cfg, reward=grpo.vowel_share_reward)
    else:  # the PPO benchmark's own config, with the experiments' config changes (e.g. shared_critic) applied
        cfg = bench.policyshift_config(assets, ns.threads, ns.experiment, tempfile.mkdtemp(prefix="ps-prof-"))
        trainer = PPOTrainer(cfg)

    # ---- phase labels (wall time per phase, measured outside the profiler's own accounting) ----
    wall = defaultdict(float)
    stack: list[str] = []

    def labelled(fn, label):
        """fn, timed into wall[label] and marked for the profiler. `label` may be a function of the stack
        of enclosing labels, called at each call (the same function serves two phases)."""
        def inner(*a, **k):
            name = label(stack) if callable(label) else label
            if stack and stack[-1] == name:  # re-entrant (e.g. values() inside forward())
                return fn(*a, **k)
            stack.append(name)
            t0 = time.perf_counter()
            try:
                with record_function(name):
                    return fn(*a, **k)
            finally:
                wall[name] += time.perf_counter() - t0
                stack.pop()
        return inner

    for module in bench.sampler_modules():
        module.sample = labelled(module.sample, "generate")
    R.response_hidden = labelled(R.response_hidden, "rollout/ref_forward")  # (and the policy scoring of an engine with its own weights)
    # the critic runs in the rollout (values of the sampled episodes) and inside the update's forward
    trainer.models.values = labelled(trainer.models.values,
                                     lambda stack: "update/forward" if "update" in stack else "rollout/value_forward")
    trainer.models.forward = labelled(trainer.models.forward, "update/forward")
    trainer.reward.__class__.__call__ = labelled(trainer.reward.__class__.__call__, "rollout/reward_forward")
    torch.autograd.backward = labelled(torch.autograd.backward, "update/backward")
    trainer.optimizer.step = labelled(trainer.optimizer.step, "update/optimizer")
    trainer.optimizer.zero_grad = labelled(trainer.optimizer.zero_grad, "update/optimizer")
    torch.nn.utils.clip_grad_norm_ = labelled(torch.nn.utils.clip_grad_norm_, "update/optimizer")
    trainer.update = labelled(trainer.update, "update")
    T.generate_rollout = labelled(T.generate_rollout, "rollout")

    for _ in range(ns.warmup):
        trainer.ppo_step()
    wall.clear()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(ns.iters):
            with record_function("step"):
                trainer.ppo_step()
    prof_step_wall = (time.perf_counter() - t0) / ns.iters
    prof_wall = defaultdict(float, wall)  # the phases of the profiled iterations only
    # profiler-free timing of the same iterations, to see the profiler's own overhead
    t1 = time.perf_counter()
    for _ in range(ns.iters):  # the same number of iterations, without the profiler
        trainer.ppo_step()
    bare_wall = (time.perf_counter() - t1) / ns.iters

    # ---- attribute each operator's self time to the innermost phase label that encloses it ----
    events = prof.events()
    names = set(PHASES) | {"rollout", "update", "step"}

    def phase_of(ev):  # the innermost enclosing phase label
        p = ev.cpu_parent
        while p is not None and p.name not in names:
            p = p.cpu_parent
        return p.name if p is not None else "(none)"

    op_time, op_calls = defaultdict(float), defaultdict(int)
    by_op = defaultdict(lambda: [0.0, 0])
    for ev in events:
        if ev.name in names or not ev.name.startswith("aten::"):
            continue
        ph = phase_of(ev)
        op_time[ph] += ev.self_cpu_time_total / 1e6
        op_calls[ph] += 1
        by_op[ev.name][0] += ev.self_cpu_time_total / 1e6
        by_op[ev.name][1] += 1

    n = ns.iters
    # wall times per phase from the profiler-free iterations (the timers ran in both; the profiler's own
    # overhead would otherwise inflate every phase); operator times and counts from the profiled ones
    wall = defaultdict(float, {k: wall[k] - prof_wall.get(k, 0.0) for k in wall})
    rollout_other = wall["rollout"] - wall["generate"] - wall["rollout/ref_forward"] - wall["rollout/value_forward"]
    update_other = wall["update"] - sum(wall[k] for k in ("update/forward", "update/backward", "update/optimizer"))
    table = {
        "generate": wall["generate"],
        "rollout/ref_forward": wall["rollout/ref_forward"],
        "rollout/value_forward": wall["rollout/value_forward"],
        "rollout/reward_forward": wall["rollout/reward_forward"],
        "rollout/other (logprobs, exact KL, entropy, decode)": rollout_other,
        "update/forward": wall["update/forward"],
        "update/backward": wall["update/backward"],
        "update/optimizer (zero_grad, clip, AdamW)": wall["update/optimizer"],
        "update/other (losses, stats .item())": update_other,
    }
    accounted = wall["rollout"] + wall["rollout/reward_forward"] + wall["update"]
    table["step/other (GAE, metrics, logging)"] = bare_wall * n - accounted
    print(f"\nthreads {ns.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, experiments {ns.experiment or 'none'}")
    print(f"wall per iteration: {prof_step_wall:.3f} s under the profiler, {bare_wall:.3f} s without "
          f"(wall column: without the profiler; aten column: under it)\n")
    print(f"{'phase':<52}{'wall s/iter':>12}{'share':>8}{'aten self s':>13}{'op calls':>10}")
    key_map = {"rollout/other (logprobs, exact KL, entropy, decode)": "rollout", "update/other (losses, stats .item())": "update",
               "update/optimizer (zero_grad, clip, AdamW)": "update/optimizer", "step/other (GAE, metrics, logging)": "step"}
    for label, secs in table.items():
        k = key_map.get(label, label)
        print(f"{label:<52}{secs / n:>12.3f}{secs / n / bare_wall:>8.1%}{op_time[k] / n:>13.3f}{op_calls[k] / n:>10.0f}")
    total_ops = sum(op_calls.values()) / n
    total_aten = sum(op_time.values()) / n
    print(f"{'total':<52}{bare_wall:>12.3f}{1:>8.0%}{total_aten:>13.3f}{total_ops:>10.0f}")
    print(f"\ntime outside aten operators (Python, nn.Module dispatch, autograd engine): "
          f"~{bare_wall - total_aten:.3f} s/iter ({(bare_wall - total_aten) / bare_wall:.1%}) "
          f"(profiler-free wall minus aten self time under the profiler)")
    print(f"\ntop {ns.top} operators by self CPU time (per iteration):")
    print(f"{'op':<44}{'self s':>9}{'calls':>8}{'us/call':>9}")
    for name, (secs, calls) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[: ns.top]:
        print(f"{name:<44}{secs / n:>9.3f}{calls / n:>8.0f}{secs / calls * 1e6:>9.0f}")
    if ns.trace:
        prof.export_chrome_trace(ns.trace)


if __name__ == "__main__":
    main()
