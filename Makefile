# Two commands on a fresh machine: `make run` (demo sweep + report) and `make test`.
SHELL := /bin/bash
PYTHON_BIN ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 5000
MLRUNS ?= $(CURDIR)/mlruns
ARGS ?=  # extra overrides or flags, e.g. make run ARGS="repeats=5", make bench ARGS="data"

.PHONY: install run test bench report quality weights ui server lint clean

install: $(STAMP)

# Reinstall when the dependencies change. Pins: torch 2.14.1 / torchvision 0.29.1 (local wheels).
# Bytecode is compiled here, on every core (pip's own pass is serial): where PYTHONDONTWRITEBYTECODE
# is set, Python never caches what it compiles, and every process (each test, each SLURM job)
# compiled torch, MLflow and Hydra again, 10-15 s of CPU each. Files that do not parse under this
# Python (templates, other versions' code in some packages) are skipped silently (-qq).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m compileall -qq -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') xray_ablate hydra_plugins || true
	@$(PY) -c "import torch, torchvision, xray_ablate" || (echo "install failed" >&2; exit 1)
	@touch $(STAMP)

run: install
	$(PY) -m xray_ablate -m experiment=demo $(ARGS)

# One pytest-xdist worker per core (TEST_WORKERS=0: all in this process).
TEST_WORKERS ?= auto
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

bench: install
	$(PY) -m xray_ablate.bench $(ARGS)

report: install
	$(PY) -m xray_ablate.report $(ARGS)

quality: install
	$(PY) -m xray_ablate.quality $(ARGS)

# Pretrained checkpoints into $TORCH_HOME/hub/checkpoints, verified (all, or BACKBONES="vgg16 resnet50").
weights: install
	$(PY) -m xray_ablate.models fetch $(BACKBONES)

# MLflow's job runner (seven worker processes for its GenAI jobs) is off: this tool queues none.
NO_JOBS := MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

ui: install
	$(PY) -m xray_ablate.tracking.ui sqlite:///$(MLRUNS)/mlflow.db http://127.0.0.1:$(PORT)
	$(NO_JOBS) $(VENV)/bin/mlflow ui --workers 1 --host 127.0.0.1 --port $(PORT) --backend-store-uri sqlite:///$(MLRUNS)/mlflow.db --default-artifact-root $(MLRUNS)/artifacts

server: install
	$(NO_JOBS) $(VENV)/bin/mlflow server --host 127.0.0.1 --port $(PORT) --backend-store-uri sqlite:///$(MLRUNS)/mlflow.db --default-artifact-root $(MLRUNS)/artifacts

lint: install
	$(VENV)/bin/ruff check xray_ablate tests

clean:
	rm -rf .cache outputs multirun reports
