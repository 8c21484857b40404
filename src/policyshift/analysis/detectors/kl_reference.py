"""A notice, not a problem: the imported run has no KL to the reference the panels can read — none was
computed (TRL GRPO's default β = 0 loads no reference), or it was logged in a unit no panel reads — and the
KL-like keys it does log are old-vs-new (the size of one update), not drift from the SFT model."""

from __future__ import annotations

from dataclasses import dataclass

from policyshift import keys as K
from policyshift.analysis.findings import Advice, Finding
from policyshift.analysis.runlog import history_keys

ORDER = 15

# What each detector here tells its reader (the detectors reference page and the report's findings panel read it).
ADVICE = {
    "no_reference_kl": Advice(
        detects=("A notice, not a problem: an imported RL run whose logs hold no KL to the reference the panels read (TRL GRPO's default β = 0 computes none; verl "
                 "`actor/kl_loss` is in a unit not fed)."),
        healthy="The logs carry a KL to the reference, or `--reference` measures it on fixed prompts.",
        broken="Info: nothing measures drift from the SFT model; `actor/ppo_kl` / OpenRLHF `ppo_kl` is old-vs-new, the size of one update.",
        action="Do not read old-vs-new KL as drift from the SFT model; pass `--reference` to measure KL on fixed prompts.",
    ),
}

# raw keys (`<importer>/<key>`) of other trainers: old→new KL of one update, and KL to the reference in a unit not fed
_OLD_VS_NEW = ("verl/actor/ppo_kl", "openrlhf/ppo_kl")
_REFERENCE_SHOWN = ("verl/actor/kl_loss", "verl/actor/reward_kl_penalty", "trl/kl", "openrlhf/kl", "prime_rl/ref_kl")


@dataclass
class Thresholds:
    pass


def detect_no_reference_kl(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    keys = history_keys(history)
    from policyshift.analysis.ingest import SOURCES  # the importers' raw-key prefixes (trl/, verl/, ...)

    imported = sorted({key.split("/", 1)[0] for key in keys if key.split("/", 1)[0] in SOURCES})
    if not imported or any(key.startswith(("kl/", "fixed/kl/")) for key in keys):
        return []
    if K.SCORE_MEAN not in keys:  # not an RL run on its own samples (DPO, SFT): no KL to the reference is expected in its log
        return []
    old_new = [key for key in _OLD_VS_NEW if key in keys]
    shown = [key for key in _REFERENCE_SHOWN if key in keys]
    if shown:
        first = f"KL to the reference is logged ({', '.join(shown)}) but in a unit or meaning no panel reads, so it is shown as logged only"
    else:
        first = "this run logged no KL to the reference (no reference model, e.g. TRL GRPO's default β = 0): nothing here measures drift from the SFT model"
    second = (f"; {', '.join(old_new)} is old-vs-new — how far one update moved the policy — not KL to the reference"
              if old_new else "")
    step = int(min(row.get("step", 0) for row in history)) if history else 0
    return [Finding("no_reference_kl", "info", step, f"Notice: {first}{second}. Pass --reference to measure it on fixed prompts.",
                    {"imported": imported, "old_vs_new": old_new, "reference_kl_shown": shown})]


DETECTORS = {"no_reference_kl": detect_no_reference_kl}
