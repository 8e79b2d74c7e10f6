# Two commands on a fresh machine:
#   make demo   set up .venv, run the whole DVC pipeline on generated demo events, show metrics
#   make test   set up .venv (with dev extras) and run the test suite
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: demo test setup lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	dvc repro
	spectral report metrics/evaluate.json
	@echo "More: 'dvc metrics show', 'dvc plots show' (writes dvc_plots/index.html), PNGs in plots/, model in models/model.pt"

test: setup
	pytest -q

lint: setup
	ruff check spectral pipeline tests bench

clean:
	rm -rf $(VENV) data/decoded data/embeddings data/demo_events data/sensors* models dvclive metrics plots
