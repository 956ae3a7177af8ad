# The README's two commands are `make run` and `make test`.
PYTHON ?= python3

.PHONY: run test bench chaos lint status wheel

run:  ## install what the executor needs and run it on config.json
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m geventq

test:  ## install everything the suite needs (Python packages, headless Chromium) and run it
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "make test: could not install chromium chromium-driver: the browser tests skip here and fail in CI" >&2
	$(PYTHON) -m pip install -q -r requirements-dev.txt
	@# Four test workers each start several executors: more than the default 151 connections.
	-@mysql -h127.0.0.1 -uroot -e "SET GLOBAL max_connections = GREATEST(@@max_connections, 500)" 2>/dev/null
	@# The fast tier first (pure pieces, under 5 s): a broken basic stops here.
	$(PYTHON) -m pytest -p no:xdist -o addopts="" -q tests/unit
	$(PYTHON) -m pytest --ignore=tests/unit

bench:  ## the performance benchmark (about 4 minutes; see README, Performance)
	$(PYTHON) -m pip install -q -r requirements-bench.txt
	$(PYTHON) -m tests.bench

chaos:  ## the 1-minute chaos soak (see README, Reliability)
	$(PYTHON) -m tests.chaos --minutes 1

lint:  ## ruff (lint and format check) and mypy: what .ci/run checks before the suite
	$(PYTHON) -m pip install -q -r requirements-dev.txt
	$(PYTHON) -m ruff check geventq handlers tests
	$(PYTHON) -m ruff format --check geventq handlers tests
	$(PYTHON) -m mypy

status:
	$(PYTHON) -m geventq status

wheel:  ## build the installable wheel into dist/ (see README, Installing it as a package)
	$(PYTHON) -m pip wheel --no-deps -q -w dist .
