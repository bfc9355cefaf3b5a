# `make demo` and `make test` work on a fresh machine: they create .venv and install on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: unpinned, pip would pull the CUDA build and gigabytes of packages.
	$(BIN)/pip install -q torch==2.13.0 -c constraints.txt
	$(BIN)/pip install -q -e ".[train,export,dev]" -c constraints.txt
	touch $@

install: $(STAMP)

DEMO_DATA := runs/data/digits-32

demo: $(STAMP)
	test -f $(DEMO_DATA)/dataset.json || $(BIN)/bigan data make-digits $(DEMO_DATA) --resolution 32
	$(BIN)/bigan train configs/demo.yaml --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/train_step.py --out bench/results
	$(BIN)/python bench/data_loader.py --out bench/results

clean:
	rm -rf $(VENV) runs bench/results
