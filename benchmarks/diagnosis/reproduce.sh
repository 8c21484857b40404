#!/usr/bin/env bash
# The diagnosis benchmark in one command: both halves of the corpus, then both boards with every tool
# (rldoctor and afterburn from their own venvs: RLDOCTOR / AFTERBURN name their executables, see benchmarks/README.md).
# About 1.5 hours on a 2-core CPU, most of it afterburn (scoreboard.py --tools picks columns).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() { PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 19 python "$@"; }
run benchmarks/diagnosis/build_corpus.py
run benchmarks/diagnosis/build_corpus.py --split heldout
for half in main heldout; do
  run benchmarks/diagnosis/scoreboard.py --corpus "benchmarks/diagnosis/corpus/$half"
done
