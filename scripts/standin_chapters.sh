#!/usr/bin/env bash
# Execute every chapter's paper-model branch once more, on tiny random-weight stand-ins of the
# paper's checkpoints (RHLENS_MODEL=tiny-<paper key>, see rhlens.book.runtime): the code that a GPU
# runs on Llama-2-7B-80K, Mistral, Qwen1.5 or Mixtral runs here on a CPU in seconds per cell.
# Each paper architecture is covered at least once: Llama-2-7B-80K's dynamic-NTK RoPE, Mistral
# (sliding window off), Qwen1.5 (Qwen2, q/k/v biases), Mixtral (MoE). Chapter 1 is left out: it
# trains its own toy models and loads no model.
#
#   scripts/standin_chapters.sh            # all of them
#   scripts/standin_chapters.sh 04 07      # some chapters
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A STANDIN=(
  [02]=tiny-llama-2-7b-80k
  [03]=tiny-mistral-7b-v0.2
  [04]=tiny-qwen1.5-14b
  [05]=tiny-mixtral-8x7b
  [06]=tiny-qwen1.5-14b-chat
  [07]=tiny-mistral-7b-instruct-v0.2
  [08]=tiny-mixtral-8x7b
  [09]=tiny-llama-2-7b-80k
  [10]=tiny-llama-2-7b-80k
)
chapters=("$@")
[ ${#chapters[@]} -eq 0 ] && chapters=($(printf '%s\n' "${!STANDIN[@]}" | sort))
export RHLENS_STATIC=1 MPLBACKEND=Agg OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning}"
start=$(date +%s)
failed=()
for ch in "${chapters[@]}"; do
  model=${STANDIN[$ch]:?no stand-in for chapter $ch}
  t=$(date +%s)
  if RHLENS_MODEL=$model python -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=900 \
      notebooks/${ch}_*.ipynb; then
    echo "chapter $ch on $model: passed in $(( $(date +%s) - t )) s"
  else
    echo "chapter $ch on $model: FAILED after $(( $(date +%s) - t )) s"
    failed+=("$ch")
  fi
done
echo "Stand-in chapters in $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed on their stand-ins: chapters ${failed[*]}" >&2
  exit 1
fi
