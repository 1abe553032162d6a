.PHONY: install lint check test
PY ?= python

install:  ## install mirror and its development tools
	$(PY) -m pip install -e '.[dev]'

lint:  ## fix what can be fixed automatically
	ruff check --fix .
	ruff format .

check:  ## read-only: formatting, lint, types
	ruff format --diff .
	ruff check .
	mypy --strict mirror

test:  ## the test suite with branch coverage
	$(PY) -m pytest --cov=mirror --cov-branch --cov-report=term-missing:skip-covered --cov-fail-under=85
