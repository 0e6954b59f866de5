# All set-up happens here: a fresh machine needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv test test-all lint format proto demo example example-owner example-trainer example-csv-owner example-csv-trainer bench-moe bench-quality bench-speed bench-transfer bench-load bench-scale bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# torch is pinned and installed first so nothing pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# ray: the optional Ray compute backend, installed so its tests run
	$(BIN)/pip install -q -e '.[test,ray]'
	touch $(STAMP)

venv: $(STAMP)

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)
	$(BIN)/mycroft simulate --scenario demo

# The two-terminal walkthrough (README "Two terminals"). `make example` creates the throwaway
# tokens under examples/.secrets/ once; the owner reads its token file, and the trainer is
# handed the same value in the environment variable its config names. EXAMPLES points the
# targets at a copy of the folder (the tests use one with free ports).
EXAMPLES ?= examples

example: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/example.sh $(EXAMPLES)

example-owner: example
	$(BIN)/mycroft owner serve --config $(EXAMPLES)/owner.toml

example-trainer: example
	MYCROFT_TOKEN_OWNER_A="$$(cat $(EXAMPLES)/.secrets/owner-a_trainer-1.token)" \
		$(BIN)/mycroft trainer run --config $(EXAMPLES)/trainer.toml

example-csv-owner: example
	$(BIN)/mycroft owner serve --config $(EXAMPLES)/csv/owner.toml

example-csv-trainer: example
	MYCROFT_TOKEN_SITE_SOUTH="$$(cat $(EXAMPLES)/.secrets/site-south_trainer-1.token)" \
		$(BIN)/mycroft trainer run --config $(EXAMPLES)/csv/trainer.toml

bench-moe: $(STAMP)
	$(BIN)/python -m bench.moe_bench

bench-quality: $(STAMP)
	$(BIN)/python -m bench.quality

bench-speed: $(STAMP)
	$(BIN)/python -m bench.selection_speed

bench-transfer: $(STAMP)
	$(BIN)/python -m bench.transfer

bench-load: $(STAMP)
	$(BIN)/python -m bench.load

bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale

bench: bench-moe bench-quality bench-speed bench-transfer bench-load bench-scale

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
