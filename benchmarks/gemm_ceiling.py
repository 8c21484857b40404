"""How fast can one PPO iteration of the CPU benchmark be, at equal work? A ceiling from its matmuls alone.

Every matrix product of one iteration at the issue's setting (GPT-2 4 × 256, vocabulary 4096, batch 16,
8 + 48 tokens, 4 epochs × 2 minibatches, separate critic and reward model) is listed with its shape and
count; each distinct shape is timed with `torch.mm` / `torch.bmm` at 2 threads (best of several runs), and
the iteration's matmul time is the sum. Everything else — sampling, softmax, layer norms, GELU, the
optimizer, Python — is taken as free, so the sum is a lower bound on any implementation's s/iteration
that does the same work in fp32. The 2048² `torch.mm` peak is measured alongside: each shape's speed is
reported as a fraction of it, so a run on a loaded machine still gives the ceiling for a quiet one
(scale by quiet peak / measured peak).

    python benchmarks/gemm_ceiling.py [--threads 2] [--quiet-peak 197]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from ppo_vs_trl import BATCH, EPOCHS, MINIBATCHES, N_EMBD, N_HEAD, N_LAYER, PROMPT_LEN, RESPONSE_LEN, VOCAB, matmul_peak


def linear(rows: int, d_in: int, d_out: int, backward: bool) -> list[tuple]:
    """y = x·W: forward (rows×d_in)(d_in×d_out); backward dX = dY·Wᵀ and dW = Xᵀ·dY."""
    out = [("mm", rows, d_in, d_out)]
    if backward:
        out += [("mm", rows, d_out, d_in), ("mm", d_in, rows, d_out)]
    return out


def attention(batch: int, q_len: int, k_len: int, backward: bool) -> list[tuple]:
    """Per head: S = Q·Kᵀ (q×dh)(dh×k), O = P·V (q×k)(k×dh); backward: two products each."""
    b, dh = batch * N_HEAD, N_EMBD // N_HEAD
    out = [("bmm", b, q_len, dh, k_len), ("bmm", b, q_len, k_len, dh)]
    if backward:
        out += [("bmm", b, q_len, k_len, dh), ("bmm", b, dh, q_len, k_len),  # dQ = dS·K, dKᵀ = Qᵀ·dS
                ("bmm", b, q_len, dh, k_len), ("bmm", b, k_len, q_len, dh)]  # dP = dO·Vᵀ, dV = Pᵀ·dO
    return out


def body(batch: int, q_len: int, k_len: int, backward: bool = False) -> list[tuple]:
    """The transformer blocks on batch × q_len new positions attending to k_len positions."""
    rows, d = batch * q_len, N_EMBD
    per_layer = linear(rows, d, 3 * d, backward) + attention(batch, q_len, k_len, backward) + linear(rows, d, d, backward) \
        + linear(rows, d, 4 * d, backward) + linear(rows, 4 * d, d, backward)
    return per_layer * N_LAYER


def iteration() -> dict[str, list[tuple]]:
    B, P, R, L = BATCH, PROMPT_LEN, RESPONSE_LEN, PROMPT_LEN + RESPONSE_LEN
    mb = B // MINIBATCHES
    generate = body(B, P, P) + linear(B, N_EMBD, VOCAB, False)  # prefill, then the first token's logits
    for step in range(1, R):  # one new position per step against the KV cache
        generate += body(B, 1, P + step) + linear(B, N_EMBD, VOCAB, False)
    forwards = body(B, L, L) + linear(B * R, N_EMBD, VOCAB, False)  # reference log-probs (response positions)
    forwards += body(B, L, L) * 2  # value model and reward model (their heads are 256 → 1: negligible)
    one_minibatch = body(mb, L, L, True) + linear(mb * R, N_EMBD, VOCAB, True) + body(mb, L, L, True)  # policy + critic
    return {"generate": generate, "rollout forwards": forwards, "update": one_minibatch * EPOCHS * MINIBATCHES}


def flops(op: tuple) -> float:
    return 2.0 * (op[1] * op[2] * op[3] if op[0] == "mm" else op[1] * op[2] * op[3] * op[4])


def time_op(op: tuple, repeats: int = 7) -> float:
    """Best wall time of one product (inputs pre-made; enough inner iterations to span ~20 ms)."""
    if op[0] == "mm":
        a, b = torch.randn(op[1], op[2]), torch.randn(op[2], op[3])
        run = lambda: torch.mm(a, b)  # noqa: E731
    else:
        a, b = torch.randn(op[1], op[2], op[3]), torch.randn(op[1], op[3], op[4])
        run = lambda: torch.bmm(a, b)  # noqa: E731
    run()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.02:
        run()
        n += 1
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            run()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet-peak", type=float, default=None, help="GFLOP/s of the 2048² mm on the quiet machine, to rescale")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak_before = matmul_peak(args.threads)
    phases = iteration()
    timed: dict[tuple, float] = {}
    for ops in phases.values():
        for op in set(ops):
            timed.setdefault(op, time_op(op))
    peak = max(peak_before, matmul_peak(args.threads))
    scale = (peak / args.quiet_peak) if args.quiet_peak else 1.0
    print(f"2048² fp32 mm peak, {args.threads} threads: {peak_before:.0f} / {peak:.0f} GFLOP/s (before / after)")
    total_f = total_t = 0.0
    print(f"{'phase':<18}{'products':>9}{'GFLOP':>9}{'matmul s':>10}{'% of peak':>11}")
    for name, ops in phases.items():
        f = sum(flops(op) for op in ops)
        t = sum(timed[op] for op in ops) * scale
        total_f, total_t = total_f + f, total_t + t
        print(f"{name:<18}{len(ops):>9}{f / 1e9:>9.1f}{t:>10.3f}{100 * f / 1e9 / t / (args.quiet_peak or peak):>10.0f}%")
    print(f"{'iteration':<18}{'':>9}{total_f / 1e9:>9.1f}{total_t:>10.3f}{100 * total_f / 1e9 / total_t / (args.quiet_peak or peak):>10.0f}%")
    by_shape = defaultdict(float)
    for ops in phases.values():
        for op in ops:
            by_shape[op] += timed[op] * scale
    print("\nslowest shapes (share of the iteration's matmul time, speed as % of peak):")
    for op, t in sorted(by_shape.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {op!s:<34} {100 * t / total_t:5.1f}%   {100 * flops(op) / 1e9 / timed[op] / peak:4.0f}% of peak")


if __name__ == "__main__":
    main()
