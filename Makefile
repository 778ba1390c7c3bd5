# Quick start: `make demo` (the main job) and `make test`. Both create .venv and install the package
# into it when needed; the stamp makes a second run skip straight to the work.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev,cuda12]"  # dev includes the export and ray extras
	touch $(STAMP)

# The demo recipe (see README, "The ablation"): YOLOv8n pretrained once on other generated scenes (cached), then
# nearest and CARAFE each fine-tuned from it with 3 seeds, two runs at a time on the CPU's cores.
demo: $(STAMP)
	$(PY) scripts/ablate.py --pretrain-epochs 20 --epochs 10 --seeds 0 1 2 --jobs 2 --out runs/demo

# Two workers, one test file each at a time (a file's module fixtures, such as a trained model, are built once).
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) scripts/benchmark.py

# Every GPU check (tests, compute-sanitizer, kernel variants, modules, training steps, TensorRT) in one run; the
# report lands in benchmarks/results/gpu-check.{json,md,log}. Without a GPU it says so and fails.
gpu-check: $(STAMP)
	$(PY) -m carafe_ultra gpu-check --out benchmarks/results

clean:
	rm -rf $(VENV) build *.egg-info
