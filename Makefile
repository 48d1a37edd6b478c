# `make demo` runs the main job on built-in data; `make test` runs the default test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-done
DEMO_OUT ?= demo_out
APT_PACKAGES := ffmpeg espeak-ng libdlib-data
# optional: tcmalloc makes CPU training ~20% faster (demo/fast_malloc.py); set-up goes on without it
APT_OPTIONAL := libtcmalloc-minimal4

.PHONY: setup system-deps test-media test test-slow test-faults test-gpu demo clean

setup: $(STAMP)

# Idempotent: re-running only re-checks the stamp (fast). Order: torch, numpy+cython, fairseq
# (built against that torch, without build isolation), then the rest.
$(STAMP): requirements.txt Makefile pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q numpy==2.4.6 cython==3.3.1
	$(PIP) install -q --no-build-isolation fairseq-fixed==0.12.3.1
	$(PIP) install -q -r requirements.txt
	# fairseq pulls torchaudio, whose PyPI build does not load with this torch; transformers probes it at import
	$(PIP) uninstall -y -q torchaudio
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Debian packages used by preparation and the demo; installed only when missing.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@missing=""; for p in $(APT_OPTIONAL); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing optional Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing ) \
			|| echo "warning: could not install$$missing; CPU training will be about 20% slower"; \
	fi

# real speech for the tests: pocketsphinx's LibriVox recordings (sha256-checked, fetched once into .cache/);
# without network the tests that need them are skipped, saying why
test-media: setup
	@$(PY) tests/data/fetch_test_media.py || echo "warning: test recordings not fetched; the tests that need them are skipped"

test: setup test-media
	OMP_NUM_THREADS=2 $(VENV)/bin/pytest -m "not slow and not faults and not gpu" $(PYTEST_ARGS)

test-slow: setup test-media
	OMP_NUM_THREADS=2 $(VENV)/bin/pytest -m "slow or faults" $(PYTEST_ARGS)

test-faults: setup
	OMP_NUM_THREADS=2 $(VENV)/bin/pytest -m faults $(PYTEST_ARGS)

# CUDA tier (skipped without a GPU); on the offline GPU machine: bash bench/gpu_check.sh
test-gpu: setup
	$(VENV)/bin/pytest -m gpu $(PYTEST_ARGS)

demo: setup
	$(PY) -m demo.run --out-dir $(DEMO_OUT) $(DEMO_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) outputs
