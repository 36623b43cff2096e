# Two commands for a fresh machine: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test test-mock test-slow bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,spark]'
	$(BIN)/glmix compile
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(BIN)/glmix demo

# Lint and format of the package, then three things at once: the whole suite on a Kafka broker process (Tansu), the
# Kafka tests again on librdkafka's mock cluster, and mypy; the last two print their output when the first ends, and
# any one failing fails the target. The suite mostly waits on brokers and processes, so it runs on four pytest-xdist
# workers (each with its own broker; one worker per test file keeps module fixtures built once), the longest modules
# first (tests/module_seconds.json, which `--record-module-seconds` updates; tests/conftest.py), rather than xdist's
# most-tests-first; the mock's tier, waiting still more, fills the idle CPU on two workers of its own. Tests marked
# `alone` judge a live pipeline against its replay and need the machine to themselves: they run after, one at a time.
XDIST := -n 4 --dist loadfile --no-loadscope-reorder
MOCK_XDIST := -n 2 --dist loadfile --no-loadscope-reorder
MOCK_LOG := .pytest-mock-tier.log
MYPY_LOG := .mypy.log
test: $(STAMP)
	$(BIN)/ruff check stream
	$(BIN)/ruff format --check stream
	@$(BIN)/mypy > $(MYPY_LOG) 2>&1 & types=$$!; \
	KAFKA_TEST_BROKER=mock $(BIN)/python -m pytest -q $(MOCK_XDIST) -p no:cacheprovider -m "kafka and not alone" \
		> $(MOCK_LOG) 2>&1 & mock=$$!; \
	KAFKA_TEST_BROKER=process $(BIN)/python -m pytest -q $(XDIST) --durations=15 -m "not alone"; process=$$?; \
	wait $$types; typed=$$?; wait $$mock; mocked=$$?; \
	echo "--- mypy, run alongside ---"; cat $(MYPY_LOG); \
	echo "--- the Kafka tests on librdkafka's mock cluster, run alongside ---"; cat $(MOCK_LOG); \
	test $$typed -eq 0 && test $$process -eq 0 && test $$mocked -eq 0
	KAFKA_TEST_BROKER=process $(BIN)/python -m pytest -q -m alone

test-mock: $(STAMP)
	KAFKA_TEST_BROKER=mock $(BIN)/python -m pytest -q $(XDIST) -m kafka

test-slow: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,spark,bench]'
	$(BIN)/python -m pytest -q $(XDIST) --run-slow -m "not alone"
	$(BIN)/python -m pytest -q --run-slow -m alone

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,spark,bench]'
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/newton.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/scoring.py
	$(BIN)/python bench/refit.py
	$(BIN)/python bench/run_all.py
	$(BIN)/python bench/backtest.py
	$(BIN)/python bench/freshness.py
	$(BIN)/python bench/river_peer.py
	$(BIN)/python bench/join_peers.py

clean:
	rm -rf $(VENV) .pytest_cache
