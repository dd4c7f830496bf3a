#!/usr/bin/env bash
# Open every chapter as Colab does: no checkout, rhlens installed from a wheel, the notebook
# alone in an empty folder.
#
# 1. Build a wheel from this working tree and install it (no dependencies, no index)
#    into a fresh virtual environment, offline: its dependencies are lent by ./.venv, the build's
#    environment that scripts/setup.sh makes (a .pth file names a folder of links to every
#    installed package but rhlens, so nothing of the checkout is on the path; the check below
#    proves it, and that the lent packages meet the wheel's requirements).
# 2. Check that the wheel ships every data file a chapter names (`data.path("...")`).
# 3. Copy each chapter notebook alone into an empty temporary folder and execute it there with
#    that environment's kernel, on what the table CHAPTERS below says: a chapter's paper-model
#    branch on a tiny random-weight stand-in of a paper checkpoint, or the CPU. A chapter that
#    reads a file the wheel does not ship, or a path of the repository, fails.
#
#   scripts/colab_chapters.sh            # every chapter, as the table says
#   scripts/colab_chapters.sh 04 07      # some chapters
#   scripts/colab_chapters.sh --book     # first the book build with the same kernel, each chapter
#                                        # in a temporary folder (every chapter on the embedded
#                                        # SmolLM2, 01 included, from the wheel); then the chapters
#                                        # on their stand-ins. `make test` runs this: 01 runs once.
#
# RHLENS_CELL_TIMEOUT (seconds, default 900, as the book build's) bounds each cell.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# The one table: every chapter and what it runs on in this job. `tiny-<paper key>` is that paper
# checkpoint's random-weight stand-in (RHLENS_MODEL): the chapter takes its paper-model branch.
# Together the stand-ins cover each paper architecture at least once: Llama-2-7B-80K's
# dynamic-NTK RoPE, Mistral (sliding window off), Qwen1.5 (Qwen2, q/k/v biases), Mixtral (MoE).
# `cpu`: the chapter loads no pretrained model (it trains its own) and runs as on a CPU runtime.
# A new chapter adds its line here; a chapter without one stops the job (tests/book/test_book.py
# checks the table against notebooks/).
CHAPTERS='
01  cpu
02  tiny-llama-2-7b-80k
03  tiny-mistral-7b-v0.2
04  tiny-qwen1.5-14b
05  tiny-mixtral-8x7b
06  tiny-qwen1.5-14b-chat
07  tiny-mistral-7b-instruct-v0.2
08  tiny-mixtral-8x7b
09  tiny-llama-2-7b-80k
10  tiny-llama-2-7b-80k
'
declare -A ON=()
while read -r ch model; do if [ -n "$ch" ]; then ON[$ch]=$model; fi; done <<< "$CHAPTERS"
book=0
chapters=()
for arg in "$@"; do
  case "$arg" in
    --book) book=1 ;;
    [0-9][0-9]) chapters+=("$arg") ;;
    *) echo "colab_chapters.sh: unknown argument '$arg': give chapter numbers (04 07) or --book" >&2
       exit 2 ;;
  esac
done
if [ ${#chapters[@]} -eq 0 ]; then
  for nb in notebooks/[0-9][0-9]_*.ipynb; do chapters+=("$(basename "$nb" | cut -c1-2)"); done
fi
for ch in "${chapters[@]}"; do
  ls notebooks/${ch}_*.ipynb >/dev/null 2>&1 || { echo "no chapter $ch in notebooks/" >&2; exit 2; }
  case "${ON[$ch]:-}" in
    cpu|tiny-*) ;;
    *) echo "colab_chapters.sh: chapter $ch has no line in the CHAPTERS table at the top of" \
            "scripts/colab_chapters.sh: add '$ch  tiny-<paper key>' (its stand-in), or" \
            "'$ch  cpu' for a chapter that loads no pretrained model" >&2
       exit 2 ;;
  esac
done
if [ "$book" = 1 ]; then
  # The book build has run the CPU chapters from the wheel, each in a temporary folder.
  runs=()
  for ch in "${chapters[@]}"; do [ "${ON[$ch]}" = cpu ] || runs+=("$ch"); done
  chapters=(${runs[@]+"${runs[@]}"})
fi

export RHLENS_STATIC=1 MPLBACKEND=Agg OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning}"
unset PYTHONPATH RHLENS_MODEL
# The build's Python (./.venv, as `make` sets it up): it builds the wheel and lends torch.
PY=${PYTHON:-$ROOT/.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/rhlens-colab.XXXXXX")
# CPU=seconds (user + system) of every finished child so far: with wall time, what a step cost
# on a machine that other jobs share. `times` runs in this shell (a $(...) subshell has no children).
cpu() { times > "$work/times"; CPU=$(awk 'NR == 2 {split($1, u, /[ms]/); split($2, s, /[ms]/);
                                        printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2]}' "$work/times"); }
cleanup() { local t=$(date +%s); rm -rf "$work"; echo "removed the environment in $(( $(date +%s) - t )) s"; }
trap cleanup EXIT
start=$(date +%s)

# --- 1. wheel, fresh environment ------------------------------------------------------------
mkdir -p "$work/src"
tar --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md LICENSE rhlens \
  | tar -xf - -C "$work/src"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src" >/dev/null
wheel=$(ls "$work"/dist/rhlens-*.whl)
"$PY" -m venv "$work/venv"
venv="$work/venv"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$work/lent"
# Lend every installed distribution of the build's environment but rhlens itself (its editable
# hook would put the checkout on the path) and what the fresh environment already has (pip):
# a link per top-level entry, in one folder that a .pth names. Installing nothing from an index
# keeps the job offline and quick; the check below holds the wheel's requirements to what is lent.
"$PY" - "$work/lent" "$site" <<'EOF'
import importlib.metadata as md, os, pathlib, sys, sysconfig
lent, fresh = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
build = pathlib.Path(sysconfig.get_paths()["purelib"])
own = {f.parts[0] for f in md.distribution("rhlens").files or []}
have = {p.name for p in fresh.iterdir()} | {"pip", "__pycache__"}
for entry in sorted(build.iterdir()):
    name = entry.name
    if (name in own or name in have or name.endswith(".pth") or name.startswith("__editable__")
            or name.lower().startswith(("rhlens", "pip-"))):
        continue
    os.symlink(entry, lent / name)
EOF
echo "$work/lent" > "$site/_lent_from_build.pth"
"$venv/bin/python" -m pip install -q --no-compile --no-deps --no-index "$wheel"
# The lent packages must meet what the wheel declares for a chapter run: its dependencies and
# the test extra (nbmake, ipykernel). The GPU half of the `colab` extra (accelerate,
# bitsandbytes, datasets) only matters on a GPU, which no chapter takes here.
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md, sys
from packaging.requirements import Requirement
missing = []
for line in md.requires("rhlens") or []:
    req = Requirement(line)
    if req.marker and not req.marker.evaluate({"extra": "test"}):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(f"{req} (not installed)")
        continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(f"{req} (found {version})")
if missing:
    sys.exit("the build environment (./.venv) lacks what the wheel needs: " + "; ".join(missing)
             + " (run ./scripts/setup.sh)")
EOF
"$venv/bin/python" -c "import rhlens" 2>/dev/null || { echo "the wheel did not install" >&2; exit 1; }
mkdir -p "$work/jupyter/kernels/python3"
cat > "$work/jupyter/kernels/python3/kernel.json" <<EOF
{"argv": ["$venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3 (rhlens wheel)", "language": "python"}
EOF
export JUPYTER_PATH="$work/jupyter"
installed=$(date +%s)
cpu; installed_cpu=$CPU
echo "wheel $(basename "$wheel") installed in a fresh environment in $((installed - start)) s" \
     "(CPU $installed_cpu s)"

# --- 2. the checkout is not on the path; the wheel ships what the chapters name -------------
(cd "$work" && "$venv/bin/python" - "$venv" "$ROOT" "$ROOT"/notebooks/[0-9][0-9]_*.ipynb <<'EOF'
import json, pathlib, re, sys
import rhlens
from rhlens import data
venv, root, notebooks = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
where = pathlib.Path(rhlens.__file__).resolve()
if venv.resolve() not in where.parents:
    sys.exit(f"rhlens imports from {where}, not from the wheel in {venv}")
if any(str(root) == p or p.startswith(str(root) + "/") for p in sys.path):
    sys.exit(f"the checkout {root} is on sys.path")
missing = []
for nb in notebooks:
    code = "".join("".join(c["source"]) for c in json.loads(open(nb).read())["cells"]
                   if c["cell_type"] == "code")
    for name in sorted(set(re.findall(r"""data\.path\(\s*["']([^"']+)["']""", code))):
        try:
            data.path(name)
        except FileNotFoundError:
            missing.append(f"{pathlib.Path(nb).name} reads {name}")
if missing:
    sys.exit("the wheel does not ship: " + "; ".join(missing) + " (add it to rhlens/data/, "
             "which pyproject.toml's package-data ships)")
print(f"rhlens {rhlens.__version__} from {where.parent}; the chapters' data files are in the wheel")
EOF
)

# --- 3. the book (optional), then each chapter alone ------------------------------------------
if [ "$book" = 1 ]; then
  # Sphinx runs in ./.venv (the API pages read this checkout); each chapter executes in a
  # temporary folder (_config.yml: run_in_temp) with the kernel above ($JUPYTER_PATH's python3),
  # i.e. from the wheel.
  t=$(date +%s); cpu; c=$CPU
  PATH="$(dirname "$PY"):$PATH" ./scripts/build_book.sh
  cpu
  echo "book build (every chapter on the embedded SmolLM2, chapter 01 on the CPU) in" \
       "$(( $(date +%s) - t )) s (CPU $(( CPU - c )) s)"
fi
failed=()
for ch in "${chapters[@]}"; do
  nb=$(ls notebooks/${ch}_*.ipynb)
  dir=$(mktemp -d "$work/chapter$ch.XXXX")
  cp "$nb" "$dir/"
  model=${ON[$ch]#cpu}
  what=${model:-the CPU}
  t=$(date +%s); cpu; c=$CPU
  if (cd "$dir" && env ${model:+RHLENS_MODEL=$model} "$venv/bin/python" -m pytest -q \
        -p no:cacheprovider --rootdir "$dir" --nbmake --nbmake-timeout="${RHLENS_CELL_TIMEOUT:-900}" "$(basename "$nb")"); then
    cpu; echo "chapter $ch on $what: passed in $(( $(date +%s) - t )) s (CPU $(( CPU - c )) s)"
  else
    cpu; echo "chapter $ch on $what: FAILED after $(( $(date +%s) - t )) s (CPU $(( CPU - c )) s)"
    failed+=("$ch")
  fi
done
cpu
echo "Colab-style chapters in $(( $(date +%s) - start )) s (CPU $CPU s; install" \
     "$((installed - start)) s)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed when opened alone from the wheel: chapters ${failed[*]}" >&2
  exit 1
fi
