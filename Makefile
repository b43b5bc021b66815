VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: deps install test demo lint clean bench soak soak-async fuzz

deps:
	@bash .ci/deps.sh

$(STAMP): pyproject.toml setup.py $(wildcard rpv/*/*.pyx lvm/*.pyx)
	@bash .ci/deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# the modules with a compiled twin (rpv/speedups.py), tested again on the pure-Python one
# (tests/test_lvm_inline*.py run both twins side by side in every run)
TWIN_TESTS := tests/test_nbd_protocol.py tests/test_protocol.py tests/test_protocol_connection.py \
              tests/test_protocol_fuzz.py tests/test_speedups.py tests/test_lvm_core.py \
              tests/test_lvm_drl.py tests/test_durability.py

# bytecode for every process the tests start (rpvd, glvmctl): with PYTHONDONTWRITEBYTECODE
# set, as on the CI machines, each would compile the project from source again (~0.3 s an rpvd)
test: deps $(STAMP)
	$(PY) -m compileall -q rpv lvm glvmctl tests bench
	$(PY) -m pytest -x -p no:cacheprovider
	GLVM_PURE_PYTHON=1 $(PY) -m pytest -x -p no:cacheprovider $(TWIN_TESTS)

demo: deps $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash conf/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check rpv lvm glvmctl tests

bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/run.py --sparse
	$(PY) bench/async_latency.py --rtt 0 10 50
	$(PY) bench/outage_detect.py --pvs 2 4
	$(PY) bench/multipath.py
	$(PY) bench/hotpath_micro.py
	$(PY) bench/cpu_per_io.py --repeat 2
	$(PY) bench/cpu_per_io.py --repeat 2 --sparse
	$(PY) bench/compress_resync.py
	$(PY) bench/checksum_resync.py
	$(PY) bench/resync_impact.py

SOAK_FAULTS ?= 200
SOAK_SEED ?= 1

soak: $(STAMP)
	$(PY) -m tests.soak --faults $(SOAK_FAULTS) --seed $(SOAK_SEED)

soak-async: $(STAMP)
	$(PY) -m tests.soak --async --faults $(SOAK_FAULTS) --seed $(SOAK_SEED)

clean:
	rm -rf $(VENV) build *.egg-info

fuzz: $(STAMP)
	bash .ci/sanitize.sh 100000
	$(PY) -m tests.fuzz --inputs 1000000
