# All set-up happens here: a fresh machine needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The minimum-versions venv: every dependency at the lower bound pyproject.toml declares.
VENV_MIN := .venv-min
STAMP_MIN := $(VENV_MIN)/.installed
# torch==2.13.0 is the one torch installed, first, so nothing pulls a CUDA build (pyproject.toml
# declares the range torch>=2.13,<3). constraints/torch.txt holds the same pin for `-c`;
# tests/test_dependencies.py checks that it, this file, the Dockerfile and the README agree.
TORCH_PIN := constraints/torch.txt

.PHONY: venv venv-min test test-slow test-all test-minimum lint format proto demo example example-owner example-trainer example-csv-owner example-csv-trainer bench-moe bench-quality bench-speed bench-transfer bench-load bench-scale bench-ecosystem bench clean

# $(1): the venv folder. torch is pinned and installed first so nothing pulls a CUDA build.
define make_venv
	$(PY) -m venv $(1)
	$(1)/bin/pip install -q --upgrade pip setuptools wheel
	$(1)/bin/pip install -q 'torch==2.13.0'
endef

$(STAMP): pyproject.toml $(TORCH_PIN)
	$(call make_venv,$(VENV))
	# dev: the tests, grpcio-tools at the pin the generated code was made with, ruff; parquet and
	# ray so the tests of those extras run too.
	$(BIN)/pip install -q -c $(TORCH_PIN) -e '.[dev]'
	touch $(STAMP)

$(STAMP_MIN): pyproject.toml constraints/minimum.txt
	rm -rf $(VENV_MIN)
	$(call make_venv,$(VENV_MIN))
	$(VENV_MIN)/bin/pip install -q -c constraints/minimum.txt -e '.[test,parquet,ray]'
	touch $(STAMP_MIN)

venv: $(STAMP)

venv-min: $(STAMP_MIN)

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The heavier tests (fault injection, fuzzing at volume): `make test` plus these is `test-all`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The declared lower bounds, proven: the fast tests in a venv resolving constraints/minimum.txt.
# An editable install, so it tests this working tree; it never touches .venv.
test-minimum: $(STAMP_MIN)
	$(VENV_MIN)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)

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

bench-ecosystem: $(STAMP)
	$(BIN)/python -m bench.ecosystem

bench: bench-moe bench-quality bench-speed bench-transfer bench-load bench-scale bench-ecosystem

clean:
	rm -rf $(VENV) $(VENV_MIN) build *.egg-info .pytest_cache runs
