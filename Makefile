# Two commands do everything on a fresh machine:
#   make run    set up, migrate, build the guide, start the web app and the scheduler
#   make test   set up, lint, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FLASK  := $(VENV)/bin/flask --app wsgi
HOST   ?= 127.0.0.1
PORT   ?= 5000

RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

.PHONY: run test lint setup db guide snippet bench-signup clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@ $(RUNTIME_STAMP)

setup: $(RUNTIME_STAMP)

db: $(RUNTIME_STAMP)
	$(FLASK) db upgrade

guide: $(RUNTIME_STAMP)
	$(FLASK) guide build

snippet: $(RUNTIME_STAMP)
	@$(FLASK) embed-snippet

# The web app and the scheduler run side by side (Procfile.dev, run by honcho);
# Ctrl-C stops both.
run: db guide
	@echo
	@echo "  Web app:  http://$(HOST):$(PORT)/"
	@echo "  Emails:   printed in this terminal (set MAIL_URL to send them for real)"
	@echo "  Admin:    http://$(HOST):$(PORT)/admin"
	@$(FLASK) admin hint
	@echo
	@HOST=$(HOST) PORT_WEB=$(PORT) $(VENV)/bin/honcho -f Procfile.dev start

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(DEV_STAMP) lint
	$(PY) -m pytest

bench-signup: $(DEV_STAMP)
	@command -v wrk >/dev/null || { echo "bench-signup needs wrk: apt-get install wrk"; exit 1; }
	$(PY) bench/signup.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
