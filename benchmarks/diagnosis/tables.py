"""The README's tables of the diagnosis benchmark, from a measurement: the classes per half, every run's facts, each
half's board. Copies the corpus's labels, facts and boards into a results directory first (`--save`), so the tables
a reviewer reads are regenerated from committed files.

    cd REPO && python benchmarks/diagnosis/tables.py --corpus benchmarks/diagnosis/corpus --save benchmarks/diagnosis/results
    cd REPO && python benchmarks/diagnosis/tables.py --results benchmarks/diagnosis/results    # from the committed files
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import labels  # noqa: E402
import scoreboard  # noqa: E402

TRAINERS = {"trl_grpo": "TRL GRPO", "trl_rloo": "TRL RLOO", "ps_grpo": "policyshift GRPO", "ps_grpo_stale": "policyshift GRPO", "ps_ppo": "policyshift PPO"}


def save(corpus: Path, results: Path, halves: list[str]) -> None:
    """results/{half}_labels.json, {half}_scoreboard.json and facts.json ("half/run" → facts) from the corpus."""
    results.mkdir(parents=True, exist_ok=True)
    facts = {}
    for half in halves:
        index = json.loads((corpus / half / "corpus.json").read_text())
        (results / f"{half}_labels.json").write_text(json.dumps(index, indent=1, sort_keys=True))
        (results / f"{half}_scoreboard.json").write_text((corpus / half / "scoreboard.json").read_text())
        for name in sorted(index):
            facts[f"{half}/{name}"] = json.loads((corpus / half / name / "facts.json").read_text())
    (results / "facts.json").write_text(json.dumps(facts, indent=1))


def _num(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def class_table(results: Path, halves: list[str]) -> str:
    counts, trainers = {h: Counter() for h in halves}, defaultdict(set)
    for half in halves:
        for entry in json.loads((results / f"{half}_labels.json").read_text()).values():
            counts[half][entry["label"] or "dropped"] += 1
            trainers[entry["label"] or "dropped"].add(TRAINERS[entry["trainer"]])
    lines = ["| class | " + " | ".join(halves) + " | trainers |", "|---|" + "---|" * (len(halves) + 1)]
    for cls in (*labels.CLASSES, "dropped"):
        lines.append(f"| {cls} | " + " | ".join(str(counts[h][cls]) for h in halves) + f" | {', '.join(sorted(trainers[cls]))} |")
    return "\n".join(lines)


def facts_table(results: Path, halves: list[str]) -> str:
    facts = json.loads((results / "facts.json").read_text())
    lines = ["| run | trainer | label | proxy Δσ | gold Δσ (p) | KL/token | length ref→final | truncated | entropy ref→final | distinct ref→final | zero-spread | engine Δlogp |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, f in facts.items():
        if key.split("/")[0] not in halves:
            continue
        lines.append(f"| {key} | {f['trainer']} | {labels.label(f) or 'dropped'} | {_num(f['proxy_gain_sigma'], '+.2f')} | "
                     f"{_num(f['gold_gain_sigma'], '+.2f')} ({_num(f['gold_p'], '.2g')}) | {_num(f['kl_token_final'], '.2f')} | "
                     f"{_num(f['length_ref'], '.1f')}→{_num(f['length_final'], '.1f')} | {_num(f['truncated_final'], '.2f')} | "
                     f"{_num(f['entropy_ref'], '.2f')}→{_num(f['entropy_final'], '.2f')} | {_num(f['distinct_ref'], '.2f')}→{_num(f['distinct_final'], '.2f')} | "
                     f"{_num(f.get('train_zero_spread_mean'), '.2f')} | {_num(f.get('engine_logprob_diff_mean'), '.2f')} |")
    return "\n".join(lines)


def board_table(results: Path, half: str) -> str:
    board = json.loads((results / f"{half}_scoreboard.json").read_text())
    tools = [t for t in scoreboard.TOOLS if all(t in row for row in board.values())]
    return scoreboard.markdown(dict(sorted(board.items())), tools)


# the measurements kept (results dir → the thresholds' commit) and, per half, whether it was held out for them
FREEZES = {"freeze_a6484a4": ("a6484a4", {"heldout"}), "freeze_263af47": ("263af47", {"heldout2"}), ".": ("f20e5b0 (ships)", {"heldout3"})}


def totals_table(results: Path) -> str:
    """Caught / pathological and alarmed / healthy per tool, for every kept measurement and half."""
    lines = ["| thresholds | half | held out? | " + " | ".join(scoreboard.TOOLS) + " |", "|---|---|---|" + "---|" * len(scoreboard.TOOLS)]
    for sub, (commit, held) in FREEZES.items():
        for board_file in sorted((results / sub).glob("*_scoreboard.json"), key=lambda p: (p.name != "main_scoreboard.json", len(p.name), p.name)):
            half, board = board_file.name.removesuffix("_scoreboard.json"), json.loads(board_file.read_text())
            sick = [r for r in board.values() if r["label"] != "healthy"]
            healthy = [r for r in board.values() if r["label"] == "healthy"]
            cells = [f"{sum(bool(r[t]['hit']) for r in sick)}/{len(sick)}, {sum(bool(r[t]['false_alarm']) for r in healthy)}/{len(healthy)}"
                     if all(t in r for r in board.values()) else "—" for t in scoreboard.TOOLS]
            lines.append(f"| {commit} | {half} | {'**yes**' if half in held else 'no'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="a built corpus (benchmarks/diagnosis/corpus); with --save, copied into the results first")
    ap.add_argument("--save", help="results directory to write from --corpus")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--halves", nargs="*", default=["main", "heldout", "heldout2", "heldout3"])
    args = ap.parse_args(argv)
    results = Path(args.save or args.results)
    if bool(args.corpus) != bool(args.save):
        ap.error("--corpus and --save go together (copy a built corpus's measurement into a results directory)")
    for half in args.halves:
        where = Path(args.corpus) / half / "scoreboard.json" if args.corpus else results / f"{half}_scoreboard.json"
        if not where.is_file():
            ap.error(f"no board of half {half!r}: {where} is missing")
    if args.corpus:
        save(Path(args.corpus), results, args.halves)
    print("### Totals per freeze\n\n" + totals_table(results) + "\n")
    print("### Classes\n\n" + class_table(results, args.halves) + "\n")
    for half in args.halves:
        print(f"### Board: {half}\n\n" + board_table(results, half) + "\n")
    print("### Facts\n\n" + facts_table(results, args.halves))


if __name__ == "__main__":
    main()
