# Welcome-mail service. `make` lists the targets.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt | cksum | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help install run test test-postgres install-django61 test-django61 test-django61-postgres bench lint format clean reliability soak

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  make %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv/ and install the pinned dependencies

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

run: install ## Run the whole stack: web :8000, worker, beat, Flower :5555, SMTP sink :1025
	@DJANGO_DEBUG=$${DJANGO_DEBUG-1} PATH=$(CURDIR)/$(VENV)/bin:$$PATH ./bin/run-stack

# Extra pytest arguments for every test target: make test PYTEST_ARGS='-m "not faults"'
PYTEST_ARGS ?=

test: install ## Run the whole test suite (starts its own Redis and SMTP servers)
	$(PY) -m pytest $(PYTEST_ARGS)

# A server where the postgres user may create databases; each run uses its own.
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432

test-postgres: install ## Run the whole suite on PostgreSQL at POSTGRES_URL (a throwaway test database)
	DATABASE_URL=$(POSTGRES_URL)/welcome_$$$$ $(PY) -m pytest $(PYTEST_ARGS)

# The Django 6.1 leg: Python 3.13 (pyenv's, else python3.13 on PATH), its own
# virtualenv and pins; Django's and the project's deprecations fail its tests.
VENV61 := .venv-django61
PY61 := $(VENV61)/bin/python
PYTHON313 ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.13*/bin/python3) $(shell command -v python3.13))
STAMP61 := $(VENV61)/.installed-$(shell cat requirements-django61.txt | cksum | cut -d' ' -f1)

install-django61: $(STAMP61) ## Create .venv-django61/ (Python 3.13, Django 6.1) with requirements-django61.txt

$(STAMP61): requirements-django61.txt
	@test -n "$(PYTHON313)" || { echo "No Python 3.13: pyenv install 3.13, or make PYTHON313=/path/to/python3.13" >&2; exit 1; }
	test -x $(PY61) || $(PYTHON313) -m venv $(VENV61)
	$(PY61) -m pip install --quiet --upgrade pip
	$(PY61) -m pip install --quiet -r requirements-django61.txt
	rm -f $(VENV61)/.installed-* && touch $@

test-django61: install-django61 ## Run the whole suite on Django 6.1 and Python 3.13
	$(PY61) -m pytest $(PYTEST_ARGS)

test-django61-postgres: install-django61 ## Run the whole suite on Django 6.1 and PostgreSQL at POSTGRES_URL
	DATABASE_URL=$(POSTGRES_URL)/welcome_$$$$ $(PY61) -m pytest $(PYTEST_ARGS)

bench: install ## Benchmark against django-post_office, django-mailer, django-celery-email; write docs/BENCHMARKS.md (BENCH_QUICK=1: short run)
	$(PY) -m bench $(if $(BENCH_QUICK),--quick)

lint: install ## Check formatting, lint rules and that migrations are up to date
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	DJANGO_DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

format: install ## Format the code and apply safe lint fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## Remove .venv/, .venv-django61/ and var/ (databases, mails, Redis data)
	rm -rf $(VENV) $(VENV61) var

reliability: install ## Run the fault suite and write its matrix into docs/RELIABILITY.md
	$(PY) -m pytest tests/faults -q
	$(PY) -m tests.faults.report

soak: install ## Fault soak: load + seeded random faults on real processes, writes docs/SOAK.md (SOAK_MINUTES=5, SOAK_SEED)
	$(PY) -m tests.soak
