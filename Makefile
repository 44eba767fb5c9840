# Welcome-mail service. `make` lists the targets.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt | cksum | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help install run test test-postgres bench lint format clean reliability soak

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv/ and install the pinned dependencies

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

run: install ## Run the whole stack: web :8000, worker, beat, Flower :5555, SMTP sink :1025
	@DJANGO_DEBUG=$${DJANGO_DEBUG-1} PATH=$(CURDIR)/$(VENV)/bin:$$PATH ./bin/run-stack

test: install ## Run the whole test suite (starts its own Redis and SMTP servers)
	$(PY) -m pytest

# A server where the postgres user may create databases; each run uses its own.
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432

test-postgres: install ## Run the whole suite on PostgreSQL at POSTGRES_URL (a throwaway test database)
	DATABASE_URL=$(POSTGRES_URL)/welcome_$$$$ $(PY) -m pytest

bench: install ## Benchmark against django-post_office, django-mailer, django-celery-email; write docs/BENCHMARKS.md (BENCH_QUICK=1: short run)
	$(PY) -m bench $(if $(BENCH_QUICK),--quick)

lint: install ## Check formatting, lint rules and that migrations are up to date
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	DJANGO_DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

format: install ## Format the code and apply safe lint fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## Remove .venv/ and var/ (databases, mails, Redis data)
	rm -rf $(VENV) var

reliability: install ## Run the fault suite and write its matrix into docs/RELIABILITY.md
	$(PY) -m pytest tests/faults -q
	$(PY) -m tests.faults.report

soak: install ## Fault soak: load + seeded random faults on real processes, writes docs/SOAK.md (SOAK_MINUTES=5, SOAK_SEED)
	$(PY) -m tests.soak
