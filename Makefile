# The two commands of the README:
#   make demo   set up .venv if missing, then run the main job on the built-in synthetic world
#   make evaluate   make demo, then the judges, the baselines and the evaluation harness (same PRESET / OUT)
#   make test   set up .venv if missing, then run the default test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= demo
OUT ?= outputs/$(PRESET)

.PHONY: demo evaluate tour test test-slow venv clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,pytorch3d]'
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m emoedit.cli demo --preset $(PRESET) --out $(OUT)

evaluate: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m emoedit.cli demo --preset $(PRESET) --out $(OUT) --evaluate

tour: $(STAMP)
	$(PY) -m emoedit.cli tour --out outputs/tour

clean-venv:
	rm -rf $(VENV)
