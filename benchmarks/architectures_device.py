"""The architecture checks of tests/test_architectures.py on an accelerator, where attention runs other kernels
(SDPA's flash / memory-efficient paths, left-padded rows) and bf16 is the usual precision.

For each of Llama, Qwen2, Mistral, Gemma, Phi-3 (tiny, from their configs) and each dtype: the largest gap between
the logprobs kept while sampling a left-padded batch and a fresh forward pass of each unpadded row; whether argmax
decoding by our sampler equals transformers' greedy `generate`; FutureWarnings raised while sampling; and the largest
gap between a reward model's (another architecture and vocabulary) batched and one-by-one scores.

    python benchmarks/architectures_device.py [--device cuda] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_archs import ARCHITECTURES, make_arch_model, make_bpe_tokenizer  # noqa: E402

from policyshift.config import RolloutConfig  # noqa: E402
from policyshift.kl import gather_tokens, log_softmax_t  # noqa: E402
from policyshift.models import DTYPES, PolicyAndCritic, freeze, load_causal_lm, load_tokenizer  # noqa: E402
from policyshift.rewards import ModelReward, score_rollout  # noqa: E402
from policyshift.rollout import generate_rollout, sample, truncate_after_eos  # noqa: E402

PROMPTS = ["the cat", "a dog runs on the mat and", "good", "very happy dog sits", "sad", "the mat is fine and the cat"]
REWARD_ARCH = {"llama": "qwen2", "qwen2": "gemma", "mistral": "phi3", "gemma": "llama", "phi3": "mistral"}


def check(root: Path, arch: str, dtype: str, device: str) -> dict:
    policy = load_causal_lm(str(root / arch), dtype).to(device)
    tok = load_tokenizer(str(root / arch))
    cfg = RolloutConfig(batch_size=len(PROMPTS), max_new_tokens=16, temperature=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ro = generate_rollout(PolicyAndCritic(policy), freeze(policy), tok, PROMPTS, cfg, 32, torch.Generator(device=device).manual_seed(0))
    gap = 0.0
    for i in range(len(PROMPTS)):
        n = int(ro.lengths[i])
        ids = torch.cat([ro.query_ids[i][ro.query_mask[i].bool()], ro.response_ids[i, :n]])[None]
        with torch.no_grad():
            logits = policy(input_ids=ids).logits[:, -(n + 1) : -1].float()
        fresh = gather_tokens(log_softmax_t(logits, 1.0), ro.response_ids[i : i + 1, :n])[0]
        gap = max(gap, (ro.logprobs[i, :n] - fresh).abs().max().item())
    enc = tok(PROMPTS, return_tensors="pt", padding=True).to(device)
    ours, _ = sample(policy, enc["input_ids"], enc["attention_mask"], 12, 1e-7, tok.eos_token_id, stop_at_eos=False,
                     generator=torch.Generator(device=device).manual_seed(0))
    with torch.no_grad():
        ref = policy.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False, max_new_tokens=12,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:]
    ref = torch.nn.functional.pad(ref, (0, 12 - ref.shape[1]), value=tok.pad_token_id)
    same = truncate_after_eos(ours, tok.eos_token_id, tok.pad_token_id)[0].tolist() == truncate_after_eos(ref, tok.eos_token_id, tok.pad_token_id)[0].tolist()
    rm = ModelReward.from_pretrained(str(root / f"rm_{arch}"), dtype)
    rm.model.to(device)
    batched = score_rollout(rm, ro, {}, tok)
    alone = torch.cat([rm([p], [r]) for p, r in zip(ro.prompts, ro.responses)])
    return {"arch": arch, "dtype": dtype, "max_logprob_gap": gap, "greedy_equals_generate": same,
            "future_warnings": sorted({str(w.message)[:80] for w in caught if issubclass(w.category, FutureWarning)}),
            "reward_batched_vs_alone": (batched - alone).abs().max().item(), "reward_rendering": rm.rendering(tok)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    tok = make_bpe_tokenizer(root / "tok")
    rm_tok = make_bpe_tokenizer(root / "rm_tok", vocab_size=280, seed=5)
    for arch in ARCHITECTURES:
        make_arch_model(root / arch, arch, load_tokenizer(str(root / "tok")))
        make_arch_model(root / f"rm_{arch}", REWARD_ARCH[arch], rm_tok, head="reward", seed=3)
    del tok
    rows = [check(root, arch, dtype, args.device) for dtype in ("float32", "bfloat16") for arch in ARCHITECTURES if dtype in DTYPES]
    for r in rows:
        print(json.dumps(r))
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                                              "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
