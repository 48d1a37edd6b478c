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
# (built against that torch, without build isolation), then the rest. On a new machine three things
# overlap: the Debian packages install in the background (when apt needs no password prompt), and
# fairseq's wheel builds (`pip wheel`, which does not touch the venv) while pip installs the other
# requirements; then the built wheel is installed with fairseq's own dependencies (a failed step
# still waits for both background jobs before make stops). fairseq's
# extensions compile one at a time: setuptools' build_ext.parallel (117 s instead of 189 s on 2
# cores) races in torch's BuildExtension and failed one build in three, so it is not used.
$(STAMP): requirements.txt Makefile pyproject.toml
	@set -e; run() { echo "+ $$*"; "$$@"; }; \
	trap 'wait 2>/dev/null || true' EXIT; \
	test -x $(PY) || run python3 -m venv $(VENV); \
	if [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then \
		$(MAKE) --no-print-directory system-deps > $(VENV)/system-deps.log 2>&1 & deps=$$!; \
	else \
		$(MAKE) --no-print-directory system-deps; deps=""; \
	fi; \
	run $(PIP) install -q --upgrade pip wheel setuptools; \
	run $(PIP) install -q torch==2.13.0; \
	run $(PIP) install -q numpy==2.4.6 cython==3.3.1; \
	run $(PIP) wheel -q --no-deps --no-build-isolation -w $(VENV)/wheels fairseq-fixed==0.12.3.1 & fairseq=$$!; \
	grep -v '^fairseq-fixed' requirements.txt > $(VENV)/requirements-rest.txt; \
	run $(PIP) install -q -r $(VENV)/requirements-rest.txt; \
	wait $$fairseq || { echo "error: building fairseq-fixed failed (log above)"; exit 1; }; \
	run $(PIP) install -q --no-build-isolation --find-links $(VENV)/wheels fairseq-fixed==0.12.3.1; \
	echo "# fairseq pulls torchaudio, whose PyPI build does not load with this torch; transformers probes it at import"; \
	run $(PIP) uninstall -y -q torchaudio; \
	run $(PIP) install -q --no-deps --no-build-isolation -e .; \
	if [ -n "$$deps" ]; then \
		if wait $$deps; then cat $(VENV)/system-deps.log; \
		else cat $(VENV)/system-deps.log; echo "error: installing the Debian packages failed (log above)"; exit 1; fi; \
	fi; \
	touch $(STAMP)

# Debian packages used by preparation and the demo; installed only when missing (one apt-get update).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	optional=""; for p in $(APT_OPTIONAL); do dpkg -s $$p >/dev/null 2>&1 || optional="$$optional $$p"; done; \
	[ -z "$$missing$$optional" ] && exit 0; \
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	echo "installing Debian packages:$$missing$$optional"; \
	if ! $$SUDO apt-get update -qq; then \
		[ -n "$$missing" ] && { echo "error: apt-get update failed; needed:$$missing"; exit 1; }; \
		echo "warning: could not install$$optional; CPU training will be about 20% slower"; exit 0; \
	fi; \
	if [ -n "$$missing" ]; then \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing || exit 1; \
	fi; \
	if [ -n "$$optional" ]; then \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$optional \
			|| echo "warning: could not install$$optional; CPU training will be about 20% slower"; \
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
