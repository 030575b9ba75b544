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
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The main job on the embedded default: synthetic histology data, a CPU-sized ShuffleNet
# supernet (5 choice layers, 4^5 paths) pretrained on this machine's CPU, then one of its
# paths inspected and evaluated with inherited weights.
DEMO_SPACE := --space shufflenet --input-size 64 --width-mult 0.5 --option 'stage_repeats=[1,1,2,1]'
demo: $(STAMP)
	$(BIN)/pathnas-edge data synth --out $(DEMO)/data --task classify --n-per-class 200 --image-size 64
	$(BIN)/pathnas-edge pretrain $(DEMO_SPACE) --data $(DEMO)/data --run-dir $(DEMO)/supernet \
		--epochs 20 --batch-size 32 --lr 0.02 --mixup-alpha 0 --cutmix-alpha 0 --resume
	$(BIN)/pathnas-edge inspect --supernet $(DEMO)/supernet/best.pt --arch 35753
	$(BIN)/pathnas-edge evaluate --supernet $(DEMO)/supernet/best.pt --data $(DEMO)/data --arch 35753

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
