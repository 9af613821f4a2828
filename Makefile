# The cookbook's entry points. Every target sets up what it needs on first use: uv (from PyPI if
# missing), a Python >= 3.12, and the workspace's locked dependencies in .venv.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.SUFFIXES:

VENV := .venv
BIN := $(VENV)/bin
COOKBOOK := $(BIN)/cookbook
EXAMPLES := $(notdir $(wildcard examples/*))
# The suite mostly waits on processes starting and recovering, not on CPU: run it wider than
# the machine's core count.
TEST_WORKERS ?= 6
# More pytest options for `make test`/`make unit`, e.g. PYTEST_ARGS="--durations=30" or "-k saga".
PYTEST_ARGS ?=

# A Python >= 3.12 for uv: $UV_PYTHON if set, else the one uv finds, else a pyenv version (on
# machines whose default python3 is older and whose pyenv shim does not select 3.12), else uv
# downloads one. Each candidate is run once to prove it works: a pyenv shim may exist and fail.
define find_python
for p in "$${UV_PYTHON:-}" "$$($(uv) python find '>=3.12' 2>/dev/null)" \
	$$(ls -d "$$(pyenv root 2>/dev/null || echo "$$HOME/.pyenv")"/versions/3.1[2-9]*/bin/python3 2>/dev/null); do \
	[ -n "$$p" ] && "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
		&& { echo "$$p"; exit 0; }; \
done; echo 3.12
endef
uv = $$(command -v uv || echo python3 -m uv)
# Install packages with their bytecode compiled: where PYTHONDONTWRITEBYTECODE is set (as on our
# CI machines) nothing else ever writes it, and every worker the crash matrix starts would compile
# its imports from source again (k8s-drain's worker: 2.6 s to start instead of 1.2 s).
export UV_COMPILE_BYTECODE ?= 1

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z%_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 22
	@echo "examples: $(EXAMPLES)"

$(BIN)/.synced: pyproject.toml uv.lock shared/pyproject.toml $(wildcard examples/*/pyproject.toml)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet --disable-pip-version-check uv
	@python="$$($(find_python))"; echo "setting up .venv with $$python"; \
		$(uv) sync --frozen --all-packages --quiet --python "$$python"
	@touch $@

.PHONY: setup
setup: $(BIN)/.synced ## create .venv with the locked dependencies

.PHONY: test
test: lint ## everything CI runs: lint, types, unit tests and every crash matrix
	@# mypy runs alongside the tests, not before them: a fresh clone's make test took 20 s less
	@# on two cores (649 -> 629 s). Its report follows the tests'; either failing fails the target.
	@report=$$(mktemp); $(MAKE) --no-print-directory types >"$$report" 2>&1 & types=$$!; \
	$(MAKE) --no-print-directory unit; unit=$$?; \
	wait $$types; typed=$$?; cat "$$report"; rm -f "$$report"; \
	[ $$unit -eq 0 ] && [ $$typed -eq 0 ]

.PHONY: lint
lint: setup ## ruff format + lint
	@$(BIN)/ruff format --check --quiet shared examples tests
	@$(BIN)/ruff check --quiet shared examples tests

# One mypy run over the shared code, every example's package and all the tests, then one per chaos
# driver: the examples' drivers (tests/cookbook/chaos_driver.py) share a module name, which a run
# cannot hold twice (the chaos harness loads each by path, under a name of its own). Each of those
# runs takes its example's package from the command line (else mypy finds it installed, untyped)
# and the rest from the first run's cache: 0.3 s of CPU each.
.PHONY: types
types: setup ## mypy (strict): shared code, examples' packages, every test
	@$(BIN)/mypy --strict shared/src $(foreach e,$(EXAMPLES),examples/$(e)/$(subst -,_,$(e))) \
		tests examples/*/tests --exclude '/chaos_driver\.py$$'
	@for driver in examples/*/tests/cookbook/chaos_driver.py; do \
		example=$${driver%%/tests/*}; package=$${example#examples/}; \
		$(BIN)/mypy --strict --no-error-summary --no-warn-unused-configs \
			"$$example/$${package//-/_}" "$$driver" || exit; \
	done

.PHONY: unit
unit: setup ## pytest: unit tests, example tests, crash matrices
	@# The workspace's own sources, compiled once: the suite starts thousands of processes that
	@# import them, and where PYTHONDONTWRITEBYTECODE is set each would compile them again.
	@$(BIN)/python -m compileall -q -j 0 shared/src examples tests >/dev/null
	@# An example's portable tests (examples/<x>/tests/*.py) run once, where they must pass: in
	@# its copy outside the workspace (tests/test_copy_out.py). `pytest examples/<x>` runs them here.
	@$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup \
		--ignore-glob='examples/*/tests/test_*.py' $(PYTEST_ARGS)

.PHONY: test-slow
test-slow: setup ## opt-in slow tests (minutes)
	@$(BIN)/pytest -q -m slow --timeout 900

run-%: setup ## run an example's narrated demo (e.g. make run-hello; SKIP_TIME=1 skips durable sleeps; COPY_OUT=1 runs it from a copy of its folder alone)
	@$(COOKBOOK) run $* $(if $(CRASH),--crash $(CRASH)) $(if $(SKIP_TIME),--skip-time) $(if $(COPY_OUT),--copy-out)

copy-out-%: setup ## copy an example's folder alone into a venv of its own and run the tests it carries (TO=dir keeps it)
	@$(COOKBOOK) copy-out $* $(if $(TO),--to $(TO))

crash-%: setup ## run an example's crash matrix (e.g. make crash-hello)
	@$(COOKBOOK) crash $*

chaos-%: setup ## chaos run: executions through the entry point, random SIGKILLs (SEED= EXECUTIONS= KILLS= SECONDS=)
	@$(COOKBOOK) chaos $* $(if $(SEED),--seed $(SEED)) $(if $(EXECUTIONS),--executions $(EXECUTIONS)) $(if $(KILLS),--kills $(KILLS)) $(if $(SECONDS),--seconds $(SECONDS))

.PHONY: bench
bench: setup ## benchmark vs DBOS: step overhead, concurrency, recovery, crash-matrix speed -> bench-results/ (ARGS="--postgres" adds DBOS+Postgres)
	@$(uv) sync --frozen --all-packages --quiet --group dev --group bench
	@$(COOKBOOK) bench $(ARGS)

.PHONY: devserver
devserver: setup ## run the embedded Resonate dev server in the foreground on :8001 (TOKEN=<t>: require a bearer token)
	@$(if $(TOKEN),RESONATE_DEVSERVER_TOKENS='$(TOKEN)' )$(BIN)/python -m cookbook.devserver --port $${PORT:-8001} --data-dir .cookbook/devserver

.PHONY: tree
tree: setup ## print an execution's promise tree: make tree ID=<execution id>
	@test -n "$(ID)" || { echo "usage: make tree ID=<execution id>"; exit 2; }
	@RESONATE_URL=$${RESONATE_URL:-http://127.0.0.1:8001} $(COOKBOOK) tree $(ID)

.PHONY: list
list: setup ## list the examples
	@$(COOKBOOK) list

.PHONY: clean
clean: ## remove .venv and caches
	rm -rf $(VENV) .cookbook .pytest_cache .mypy_cache .ruff_cache

.PHONY: pin
pin: setup ## rewrite the pinned crash points (tests/crash/points/) from golden runs (EXAMPLE=<name>)
	@$(COOKBOOK) pin $(EXAMPLE)

.PHONY: docs
docs: setup ## refresh README snippets from their sources, and draw each example's promise tree
	@$(COOKBOOK) docs

.PHONY: site
site: setup ## build the documentation site (MkDocs, strict) into .cookbook/site/
	@$(COOKBOOK) site

.PHONY: site-serve
site-serve: setup ## serve the documentation site on http://127.0.0.1:8000
	@$(COOKBOOK) site --serve

# Docker compose (needs a Docker engine with the compose plugin; see docker-compose.yml).
COMPOSE ?= docker compose
COMPOSE_PROFILES_ALL := kafka tigerbeetle $(EXAMPLES)

.PHONY: up
up: ## the official Resonate server + sandbox in Docker; EXAMPLE=<name> adds its worker (and gateway)
	@if [ -n "$(EXAMPLE)" ] && [ -z "$(filter $(EXAMPLE),$(EXAMPLES))" ]; then \
		echo "EXAMPLE=$(EXAMPLE): no such example (examples: $(EXAMPLES))"; exit 2; fi
	$(COMPOSE) $(if $(EXAMPLE),--profile $(EXAMPLE)) up --build --detach --wait
	@echo "Resonate server: http://localhost:8001 (RESONATE_URL); provider sandbox: http://localhost:8100"

.PHONY: down
down: ## stop and remove the compose stack, every profile (volumes are kept)
	$(COMPOSE) $(foreach p,$(COMPOSE_PROFILES_ALL),--profile $(p)) down

# The scale-out topology (shared/deploy/README.md): the official server on Postgres, the saga's
# workers as replicas, and (TRY=1) the simulated providers.
SCALE_COMPOSE := $(COMPOSE) -f shared/deploy/docker-compose.scale.yml

.PHONY: up-scale
up-scale: ## the server on Postgres + 3 saga workers + 2 gateways (POSTGRES_PASSWORD=...; TRY=1 adds the sandbox)
	@test -n "$$POSTGRES_PASSWORD" || { echo "set POSTGRES_PASSWORD (the server's database password)"; exit 2; }
	$(SCALE_COMPOSE) $(if $(TRY),--profile try) up --build --detach --wait
	@echo "Resonate server: http://localhost:8001; saga gateways: http://localhost:8080, :8081"

.PHONY: down-scale
down-scale: ## stop and remove the scale-out stack (volumes are kept)
	POSTGRES_PASSWORD="$${POSTGRES_PASSWORD:-unused}" $(SCALE_COMPOSE) --profile try down

.PHONY: new
new: setup ## scaffold a new example from the template: make new NAME=<name>
	@test -n "$(NAME)" || { echo "usage: make new NAME=<name>"; exit 2; }
	@$(COOKBOOK) new $(NAME)
	@$(uv) lock --quiet --python "$$($(find_python))"
	@$(MAKE) --no-print-directory setup
	@$(COOKBOOK) pin $(NAME)
	@$(COOKBOOK) docs --example $(NAME)

.PHONY: bench-kafka
bench-kafka: setup ## kafka-worker vs DBOS's Kafka consumer: 1000 records, produced -> deletion completed (ARGS=...)
	@$(uv) sync --frozen --all-packages --quiet --group dev --group bench
	@$(BIN)/python -m cookbook.bench.kafka $(ARGS)
