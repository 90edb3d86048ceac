# The two commands: `make demo` (set up, then run the main job on the embedded default)
# and `make test` / `make test-all` (set up, then run the tests). All create .venv and install into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo demo-quick test test-all clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel; a looser spec would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The whole loop in a fresh temporary state dir: v1, drift, refit, promotion, recovery (about 12 minutes on 2 cores).
demo: $(STAMP)
	$(BIN)/refitd demo $(DEMO_ARGS)

demo-quick: $(STAMP)
	$(BIN)/refitd demo --quick $(DEMO_ARGS)

# Unit and component tests (the default, a few minutes). PostgreSQL store tests run when
# REFITD_TEST_DATABASE_URL is set.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

# Everything: adds the integration suite (whole loops through real processes, the wheel
# beside python-daemon, every CLI command and benchmark suite). CI runs this.
test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) state .pytest_cache
