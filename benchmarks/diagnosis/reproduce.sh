#!/usr/bin/env bash
# The diagnosis benchmark in one command: the four halves of the corpus (main and three held-out halves, one per freeze), every board with every tool (rldoctor and
# afterburn from their own venvs: RLDOCTOR / AFTERBURN name their executables, see benchmarks/README.md), then the
# README's tables from the results. About 2 hours on a 2-core CPU, most of it afterburn (scoreboard.py --tools picks columns).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() { PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 19 python "$@"; }
for half in main heldout heldout2 heldout3; do
  run benchmarks/diagnosis/build_corpus.py --split "$half"
done
for half in main heldout heldout2 heldout3; do
  run benchmarks/diagnosis/scoreboard.py --corpus "benchmarks/diagnosis/corpus/$half"
done
run benchmarks/diagnosis/tables.py --corpus benchmarks/diagnosis/corpus --save benchmarks/diagnosis/results
