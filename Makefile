# Wallet system: `make run` starts both services, `make test` runs the tests.
# Both create the virtual environment and generate code when needed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
GENERATED := shared/gen/.generated
BUF_VERSION := 1.75.0
BUF := npx --yes @bufbuild/buf@$(BUF_VERSION)
# Exact versions of every Python package, with hashes (`make lock` writes it from pyproject.toml).
LOCK := requirements-dev.txt
PIP_VERSION := 26.3
UV_VERSION := 0.13.9

.DEFAULT_GOAL := help
.PHONY: help install lock proto run migrate test fuzz lint contract-check walkthrough bench soak up down clean \
	service-account rotate-keys revoke-key check-invariants restore-drill

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(INSTALLED) ## Create .venv and install the project with the locked versions of its dev tools

# uv resolves for every platform and Python >= 3.11 at once; pip alone installs the result.
lock: ## Re-pin requirements-dev.txt to pyproject.toml (UPGRADE=1: newest versions that fit)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --custom-compile-command "make lock" --quiet \
		$(if $(UPGRADE),--upgrade) --output-file $(LOCK)

$(GENERATED): $(INSTALLED) $(PROTOS)
	rm -rf shared/gen
	$(PY) -m grpc_tools.protoc --proto_path=shared/gen=protos \
		--python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	find shared/gen -type d -exec touch {}/__init__.py \;
	touch $@

proto: $(GENERATED) ## Generate Python messages, stubs and .pyi from protos/ into shared/gen

run: $(GENERATED) ## Run both services (a private PostgreSQL unless DATABASE_URL is set)
	$(PY) -m shared.local_run


# The wallet's tests run a second time with every transaction SERIALIZABLE (the mode for
# distributed PostgreSQL-compatible engines): both modes must keep the money exact.
SERIALIZABLE_TESTS = $(wildcard tests/test_wallet_*.py tests/test_bank.py)

test: $(GENERATED) ## Run the tests, then the wallet's again in SERIALIZABLE mode
	$(PY) -m pytest $(PYTEST_ARGS)
	WALLET_ISOLATION_LEVEL=serializable $(PY) -m pytest $(SERIALIZABLE_TESTS) $(PYTEST_ARGS)

fuzz: $(GENERATED) ## Fuzz every RPC of both services at length (FUZZ_EXAMPLES per RPC, default 2000)
	FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),2000) $(PY) -m pytest tests/test_fuzz.py -o timeout=0 $(PYTEST_ARGS)

contract-check: ## buf lint, and buf breaking against the last release tag (docs/releasing.md)
	$(BUF) lint protos
	BUF="$(BUF)" scripts/contract-check.sh

lint: $(GENERATED) contract-check ## contract-check, ruff check, ruff format --check and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .

walkthrough: $(GENERATED) ## Run the documented grpcurl sessions against `make run`, checking each answer
	docs/walkthrough.sh

bench: $(GENERATED) ## Measure the services beside pgbench and bcrypt references (docs/performance.md)
	$(PY) -m tests.bench

SOAK_SECONDS ?= 300
SOAK_SCENARIOS ?=
soak: $(GENERATED) ## Bank workload under faults, SOAK_SECONDS in all (SOAK_SCENARIOS="wallet-kill ...")
	$(PY) -m tests.soak --seconds $(SOAK_SECONDS) $(SOAK_SCENARIOS)

# Operator commands: against DATABASE_URL, else the private PostgreSQL of a running `make run`.
LOCAL_DATABASE_URL := postgresql://postgres@/wallet_system?host=$(CURDIR)/.data/postgres
OPERATOR := DATABASE_URL="$(or $(DATABASE_URL),$(LOCAL_DATABASE_URL))" $(PY) -m

service-account: $(GENERATED) ## Create a service account: make service-account NAME=payments SCOPES=wallet:credit [FORMAT=json]
	$(OPERATOR) auth_service.admin create-service-account --name "$(NAME)" --scopes $(SCOPES) \
		$(if $(filter json,$(FORMAT)),--json)

rotate-keys: $(GENERATED) ## Start signing access tokens with a new key
	$(OPERATOR) auth_service.admin rotate-keys

revoke-key: $(GENERATED) ## Unpublish a leaked signing key at once: make revoke-key KEY_ID=...
	$(OPERATOR) auth_service.admin revoke-key --key-id="$(KEY_ID)"

migrate: $(GENERATED) ## Apply pending migrations (make run and the services do it too)
	$(OPERATOR) shared.migrations

check-invariants: $(GENERATED) ## Check every balance against the ledger (exit 1 if one fails)
	$(OPERATOR) wallet_service.admin check-invariants

restore-drill: $(GENERATED) ## Back up, restore into a new database, check the copy [RESTORE_SERVER_URL=...]
	$(OPERATOR) shared.restore_drill $(if $(RESTORE_SERVER_URL),--restore-server "$(RESTORE_SERVER_URL)")

up: ## docker compose up (needs a Docker engine)
	docker compose up --build

down: ## docker compose down
	docker compose down

clean: ## Remove generated code and caches (keeps .venv and .data)
	rm -rf shared/gen .pytest_cache .mypy_cache .ruff_cache
