# Two commands do everything on a fresh machine:
#   make run        set up, migrate, build the guide, start the web app and the scheduler
#   make test       set up, lint, run the whole test suite, TEST_WORKERS tests at a time
# and one to run while you work:
#   make test-fast  no lint, and only the tests not marked slow or browser (each well under
#                   a second), on SQLite and PostgreSQL: under a minute on two cores
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FLASK  := $(VENV)/bin/flask --app wsgi
HOST   ?= 127.0.0.1
PORT   ?= 5000
# pytest-xdist worker processes; each has its own PostgreSQL database, SQLite files, ports
# and instance folders. Measured on two cores: 3 workers are no faster than 2, 4 slower.
TEST_WORKERS ?= 2

RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

.PHONY: run test test-fast lint setup db guide snippet bench-signup clean

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
# Links in emails and the banner use BASE_URL: on another host or port than the default,
# it follows them unless it is set already.
RUN_URL := $(if $(filter 127.0.0.1:5000,$(HOST):$(PORT)),,BASE_URL=$${BASE_URL:-http://$(HOST):$(PORT)})

run: db guide
	@echo
	@echo "  Web app:  http://$(HOST):$(PORT)/"
	@$(RUN_URL) $(FLASK) admin hint --banner
	@echo
	@$(RUN_URL) HOST=$(HOST) PORT_WEB=$(PORT) $(VENV)/bin/honcho -f Procfile.dev start

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(DEV_STAMP) lint
	$(PY) -m pytest -n $(TEST_WORKERS)

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow and not browser"

bench-signup: $(DEV_STAMP)
	@command -v wrk >/dev/null || { echo "bench-signup needs wrk: apt-get install wrk"; exit 1; }
	$(PY) bench/signup.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
