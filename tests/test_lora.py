"""LoRA (model.lora.r > 0): only the adapter trains; the reference is the same model with the adapter
off (KL exactly 0 before the first update, one base model in memory); final/ holds the adapter (and
merged weights on request); a resumed LoRA run is exact."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from policyshift import PPOConfig, PPOTrainer
from policyshift.config import ConfigError, LoRAConfig, ModelConfig
from policyshift.kl import kl_estimate
from kl_reference import logprobs_from_logits
from policyshift.lora import AdapterOffReference, apply_lora, load_merged_adapter, merged_state_dict
from policyshift.models import build_training_models, critic_values, load_causal_lm, load_sequence_classifier, response_logits
from tiny import assert_same_metrics, rows

R, N_LAYER, N_EMBD = 4, 2, 32  # tiny.make_policy: 2 layers, width 32; peft's GPT-2 default target is c_attn (32 → 96)
ADAPTER = N_LAYER * R * (N_EMBD + 3 * N_EMBD)  # lora_A (r × in) + lora_B (out × r) per adapted layer


def lora_config(world, out, steps=3, **lora):
    return PPOConfig.from_dict({
        "model": {"policy": world["policy"], "lora": {"r": R, "alpha": 8.0, **lora}},
        "data": {"prompts": world["prompts"]}, "reward": {"function": "tiny:good_fraction"},
        "rollout": {"batch_size": 8, "max_new_tokens": 6}, "ppo": {"lr": 3e-3, "num_minibatches": 2, "epochs": 2},
        "analysis": {"num_prompts": 2}, "tracking": {"tensorboard": False},
        "train": {"steps": steps, "save_every": 1, "keep_last_n": 10, "output_dir": str(out), "num_threads": 1}})


def n_params(tensors) -> int:
    seen = {}
    for t in tensors:
        seen.setdefault(t.data_ptr(), t.numel())  # shared storage (the reference's base, tied weights) counts once
    return sum(seen.values())


@pytest.fixture(scope="module")
def run(tiny_world, tmp_path_factory):
    """One LoRA run (adapter dropout on, LoRA critic, merged weights saved); the state at init is
    recorded before training."""
    out = tmp_path_factory.mktemp("lora") / "run"
    trainer = PPOTrainer(lora_config(tiny_world, out, dropout=0.1, critic=True, save_merged=True))
    enc = trainer.tokenizer(["good cat", "the dog runs on"], return_tensors="pt", padding=True)
    ids = torch.cat([enc["input_ids"], torch.tensor([[4, 5, 6], [7, 8, 1]])], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones(2, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        init = {"policy": response_logits(trainer.models.policy, ids, mask, 3), "ref": response_logits(trainer.ref_policy, ids, mask, 3)}
    base = {k: v.clone() for k, v in trainer.models.policy.get_base_model().state_dict().items() if "lora_" not in k}
    history = trainer.train()
    return {"trainer": trainer, "out": out, "history": history, "init": init, "ids": ids, "mask": mask, "base": base}


def test_only_the_adapter_trains(run):
    t = run["trainer"]
    policy_trainable = [p for p in t.models.policy.parameters() if p.requires_grad]
    critic_trainable = [p for p in t.models.critic.parameters() if p.requires_grad]
    assert sum(p.numel() for p in policy_trainable) == ADAPTER
    assert sum(p.numel() for p in critic_trainable) == ADAPTER + N_EMBD  # + the value head (score: 32 → 1), trained in full
    assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == {id(p) for p in policy_trainable + critic_trainable}


def test_kl_to_the_reference_is_exactly_zero_before_the_first_update(run):
    init = run["init"]
    assert torch.equal(init["policy"], init["ref"])  # LoRA's B starts at 0: the same floats, not just close
    tokens = run["ids"][:, -3:]
    logp, ref_logp = (logprobs_from_logits(init[k], tokens) for k in ("policy", "ref"))
    for estimator in ("k1", "k3"):
        assert torch.equal(kl_estimate(estimator, logp, ref_logp), torch.zeros_like(logp))
    assert abs(run["history"][0]["kl/k1_token_mean"]) < 1e-5  # step 1's rollout (KV-cache sampling) agrees


def test_update_moves_the_adapter_not_the_base(run):
    t, h = run["trainer"], run["history"]
    after = t.models.policy.get_base_model().state_dict()
    assert all(torch.equal(v, after[k]) for k, v in run["base"].items())
    with torch.no_grad():
        policy, ref = (response_logits(m, run["ids"], run["mask"], 3) for m in (t.models.policy, t.ref_policy))
    assert torch.equal(ref, run["init"]["ref"])  # the reference did not move with the adapter
    assert not torch.equal(policy, ref)
    assert h[-1]["kl/exact_token_mean"] > 0


def test_one_base_model_in_memory(run, tiny_world):
    t = run["trainer"]
    assert t.ref_policy.peft_model is t.models.policy and list(t.ref_policy.named_parameters()) == []
    held = n_params([*t.models.parameters(), *t.ref_policy.parameters()])
    base = n_params(load_causal_lm(tiny_world["policy"]).parameters())
    critic = n_params(load_sequence_classifier(tiny_world["policy"]).parameters())
    assert held == base + ADAPTER + critic + ADAPTER + N_EMBD  # a copied reference would add another `base`
    assert next(t.ref_policy.parameters()).device == next(t.models.policy.parameters()).device


def test_reference_is_sampled_at_step_0(run):
    samples = rows(run["out"] / "samples.jsonl")
    assert {(r["step"], r["model"]) for r in samples} == {(0, "reference"), (3, "policy")}
    assert all(r["step"] != 0 or abs(r["seq_kl"]) < 1e-4 for r in samples)


def test_final_adapter_and_merged_weights_load(run, tiny_world):
    from peft import PeftModel

    t, final = run["trainer"], run["out"] / "final"
    with torch.no_grad():
        live = response_logits(t.models.policy, run["ids"], run["mask"], 3)
        live_values = critic_values(t.models.critic, run["ids"], run["mask"], 3)
        assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_world["policy"]
        loaded = AutoModelForCausalLM.from_pretrained(final)  # transformers finds the base through adapter_config.json
        torch.testing.assert_close(response_logits(loaded, run["ids"], run["mask"], 3), live, atol=1e-5, rtol=0)
        merged = AutoModelForCausalLM.from_pretrained(final / "merged")  # a plain checkpoint: no peft involved
        assert merged.state_dict().keys() == load_causal_lm(tiny_world["policy"]).state_dict().keys()
        torch.testing.assert_close(response_logits(merged, run["ids"], run["mask"], 3), live, atol=1e-4, rtol=0)
        merged_again = load_merged_adapter(final, load_causal_lm)  # what `model.policy: RUN/final` or compare could use
        torch.testing.assert_close(response_logits(merged_again, run["ids"], run["mask"], 3), live, atol=1e-4, rtol=0)
        via_loader = load_causal_lm(str(final))  # what `policyshift compare` and `model.policy: RUN/final` use
        torch.testing.assert_close(response_logits(via_loader, run["ids"], run["mask"], 3), live, atol=1e-4, rtol=0)
        critic = PeftModel.from_pretrained(load_sequence_classifier(tiny_world["policy"]), final / "critic")
        torch.testing.assert_close(critic_values(critic, run["ids"], run["mask"], 3), live_values, atol=1e-5, rtol=0)


def test_merged_state_dict_leaves_the_live_model_alone(run):
    policy = run["trainer"].models.policy
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    merged = merged_state_dict(policy)
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())
    adapted = "transformer.h.0.attn.c_attn.weight"
    base = before["base_model.model." + adapted.replace(".weight", ".base_layer.weight")]
    assert merged[adapted].shape == base.shape and not torch.equal(merged[adapted], base)


def test_resumed_lora_run_is_exact(run, tiny_world, tmp_path):
    """From step-1 of the run (adapters, optimizer, every RNG incl. adapter dropout's) to the same metrics."""
    out = tmp_path / "run"
    shutil.copytree(run["out"], out)
    for later in ("step-2", "step-3"):
        shutil.rmtree(out / "checkpoints" / later)
    resumed = PPOTrainer(lora_config(tiny_world, out, dropout=0.1, critic=True, save_merged=True), resume=True)
    assert resumed.step == 1
    history = resumed.train()
    assert [r["step"] for r in history] == [1, 2, 3]
    assert_same_metrics(run["history"], history)


def test_adapter_dropout_only_in_the_update(tiny_world):
    policy = apply_lora(load_causal_lm(tiny_world["policy"]), LoRAConfig(r=R, dropout=0.5))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter, so dropping its input changes the output
    ids, mask = torch.tensor([[4, 5, 6, 7]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(response_logits(policy, ids, mask, 2), response_logits(policy, ids, mask, 2))  # rollouts
    assert not torch.equal(response_logits(policy, ids, mask, 2), response_logits(policy, ids, mask, 2))  # updates


def test_shared_backbone_and_contradictions(tiny_world):
    def build(ref=None, **model):
        cfg = ModelConfig(policy=tiny_world["policy"], lora=LoRAConfig(r=R, **model.pop("lora", {})), **model)
        return build_training_models(cfg, load_causal_lm(tiny_world["policy"]), ref, None, None, tiny_world["tokenizer"])

    models, ref, _ = build(share_critic_backbone=True)
    assert isinstance(ref, AdapterOffReference)
    assert sum(p.numel() for p in models.parameters() if p.requires_grad) == ADAPTER + N_EMBD + 1  # + the shared value head
    with pytest.raises(ConfigError, match="adapter off"):
        PPOConfig.from_dict({"model": {"policy": tiny_world["policy"], "reference": tiny_world["policy"], "lora": {"r": R}}})
    with pytest.raises(ConfigError, match="adapter off"):
        build(ref=load_causal_lm(tiny_world["policy"]))
    with pytest.raises(ConfigError, match="separate critic"):
        PPOConfig.from_dict({"model": {"policy": tiny_world["policy"], "share_critic_backbone": True, "lora": {"r": R, "critic": True}}})
