#!/usr/bin/env bash
# Build the book: executes every chapter notebook once (from scratch) and renders the site
# into _build/html. Any cell error or Sphinx warning fails the build (exit status != 0).
#
#   scripts/build_book.sh            # full build
#   scripts/build_book.sh --all      # also rebuild pages that did not change
set -euo pipefail
cd "$(dirname "$0")/.."
# Explorers render their static figure (a built page cannot run widget callbacks).
export RHLENS_STATIC=1
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning}"
# Torch threads: both cores for the one notebook that is running.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
start=$(date +%s)
jupyter-book build . --warningiserror --keep-going "$@"
echo "Built in $(( $(date +%s) - start )) s: $(pwd)/_build/html/index.html"
