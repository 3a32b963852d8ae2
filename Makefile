# Flytower: the two commands (`make run`, `make test`) plus lint and bench.
# Everything a fresh Debian 12 machine with Python 3.11 needs is installed from here.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# System packages the test suite's real peers need (REAL-PEERS.md).
TEST_SYSTEM_PACKAGES := mosquitto mosquitto-clients chromium ola ola-python mbpoll socat jackd2 libportaudio2 openssl victoria-metrics

.PHONY: run test lint bench bench-audio-long hil system-deps clean chaos fuzz audit

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); tools/apt-ensure python3-venv && $(PYTHON) -m venv $(VENV); }
	@$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dev]'
	@touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	@pw=$$($(BIN)/flytower user add examples/venue-demo.toml admin --role admin --generate --if-missing) \
	  && if [ -n "$$pw" ]; then echo "console sign-in: admin / $$pw (shown once; change it with: flytower user passwd examples/venue-demo.toml admin)"; fi
	$(BIN)/flytower run examples/venue-demo.toml

system-deps:
	@tools/apt-ensure $(TEST_SYSTEM_PACKAGES)

# Unit tests (pure logic, no timing) run on every core; the tests against real servers and
# simulated hardware run one at a time, as their timing needs. Both run; either failing fails.
# Then the dependency audit (tools/audit): a known vulnerability fails; a machine that cannot
# reach the vulnerability service says so and audits nothing (`make audit` fails then).
test: $(VENV)/.installed-test system-deps
	@$(BIN)/pytest -n auto tests/unit; unit=$$?; \
	  $(BIN)/pytest tests --ignore=tests/unit --durations=25; rest=$$?; \
	  $(BIN)/python tools/audit; audit=$$?; \
	  exit $$(( unit != 0 || rest != 0 || audit != 0 ))

audit: $(VENV)/.installed-test
	$(BIN)/python tools/audit --required

# The chaos suite at full length (a 30 s outage where `make test` has 5 s).
chaos: $(VENV)/.installed-test system-deps
	FLYTOWER_CHAOS_FULL=1 $(BIN)/pytest -m chaos tests/chaos

# Schemathesis on the running demo venue's API: every phase, 100 cases per operation and phase.
fuzz: $(VENV)/.installed-test system-deps
	FLYTOWER_FUZZ_EXAMPLES=100 FLYTOWER_FUZZ_PHASES=examples,coverage,fuzzing \
	  $(BIN)/pytest -s tests/integration/test_api_fuzz.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python tools/profile-docs --check

bench: $(VENV)/.installed-test system-deps
	$(BIN)/python -m benchmarks

# The sound-field engine on jackd for 10 minutes (issue 7: no xrun), against a copying stream.
bench-audio-long: $(VENV)/.installed-test system-deps
	$(BIN)/python -m benchmarks.bench_acoustics_engine --minutes 10 --rows 1x8,10x8

# Every shipped hardware-in-loop scenario but the one that exists to fail; reports in hil-out/.
HIL_SCENARIOS := $(filter-out examples/hil/venue-% examples/hil/deliberately-failing.toml,$(wildcard examples/hil/*.toml))
hil: $(VENV)/.installed-run
	@rc=0; for s in $(HIL_SCENARIOS); do $(BIN)/flytower hil -q $$s || rc=1; done; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis examples/var hil-out
