# Every target sets up ./.venv first (scripts/setup.sh), so each works on a fresh machine.
SHELL := /bin/bash
VENV := . .venv/bin/activate

.PHONY: setup demo lint test book bench exercises clean

setup:
	@./scripts/setup.sh

## The main job: score every head of the embedded SmolLM2, write scores.json and heads.png
demo: setup
	$(VENV) && rhlens score --model smollm2-135m --lengths 500,1000 --depths 0.1,0.5,0.9 \
	    --needles 2 --out runs/scores.json
	$(VENV) && rhlens plot runs/scores.json --out runs/heads.png --title "SmolLM2-135M-Instruct"

## The test suite: the lint (ruff) and the type check (mypy, on the package, settings in
## pyproject.toml); unit tests and doctests, tiny models of every architecture, SmolLM2; then
## the book build, which executes every chapter notebook once and fails on any cell error; then
## every chapter's paper-model branch on tiny stand-ins of the paper's checkpoints
test: setup lint
	$(VENV) && python -m pytest -q -p no:cacheprovider --doctest-modules rhlens tests
	$(VENV) && ./scripts/build_book.sh
	$(VENV) && ./scripts/standin_chapters.sh

## The lint and the type check (both configured in pyproject.toml)
lint: setup
	$(VENV) && ruff check rhlens tests scripts benchmarks
	$(VENV) && mypy

## Only the book (executes every chapter): _build/html/index.html
book: setup
	$(VENV) && ./scripts/build_book.sh

## The exercise notebooks (notebooks/exercises/): each chapter with its solutions replaced by stubs
exercises: setup
	$(VENV) && python scripts/make_exercises.py

## Speed and memory benchmarks (ratios against a baseline measured in the same run)
bench: setup
	$(VENV) && python benchmarks/bench_speed.py
	$(VENV) && python benchmarks/bench_memory.py

clean:
	rm -rf _build runs .pytest_cache
