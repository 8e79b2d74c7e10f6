# Two commands on a fresh machine:
#   make demo   set up .venv, run the whole DVC pipeline on generated demo events, show metrics
#   make test   set up .venv (with dev extras) and run the test suite
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: demo test quick setup lint golden deps clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev,serve]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	dvc repro
	spectral report metrics/evaluate.json
	@echo "More: 'dvc metrics show', 'dvc plots show' (writes dvc_plots/index.html), PNGs in plots/, model in models/model.pt"

# Lint, then the suite on two workers, one test file each at a time (a file's module fixtures stay in one process).
test: setup lint
	pytest -q -n 2 --dist loadfile

# The quick loop while editing: everything but the tests marked slow (real `dvc repro`, benches, torchrun).
quick: setup
	pytest -q -n 2 --dist loadfile -m "not slow"

lint: setup
	ruff check spectral pipeline tests bench

# Rewrite the committed digests of the small synth -> decode -> sensors run (tests/test_golden.py)
# when a change is meant to alter those bytes.
golden: setup
	python tests/golden_run.py --update > /dev/null

# Rewrite each dvc.yaml stage's code deps as the import closure of its script (tests/test_deps.py).
deps: setup
	python -m spectral.runtime.deps --write dvc.yaml

clean:
	rm -rf $(VENV) data/decoded data/embeddings data/demo_events data/sensors* models dvclive metrics plots
