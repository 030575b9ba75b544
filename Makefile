# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both (re)build the virtual environment only when pyproject.toml has changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO ?= demo

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[toolchain,test]'
	touch $(STAMP)

# The main job on the embedded default: synthetic histology data, a CPU-sized ShuffleNet
# supernet pretrained on this CPU, the search for this CPU's latency, then extract, retrain,
# export and validation. Re-running resumes: finished stages are skipped.
demo: $(STAMP)
	$(BIN)/pathnas-edge pipeline --run-dir $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
