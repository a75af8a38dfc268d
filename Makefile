# streamjobs entry points. `make run` starts everything and streams a demo job;
# `make test` runs the whole suite against a real Kafka broker and PostgreSQL.
# Both install what they need first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed
STACK_ENV ?= .state/stack.env

.DEFAULT_GOAL := help
.PHONY: help install lock system-deps run fleet chaos demo stop status logs doctor test test-unit lint format bench schemas token clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: system-deps $(STAMP) ## create .venv: the exact versions of uv.lock, the project editable

# Java 17 runs the Kafka broker, Maven fetches its jars once, and promtool (Debian's
# prometheus package) checks our metrics, alert rules and their tests, and Chromium
# (/usr/bin/chromium) runs the dashboard's browser test. Install them from the
# distribution when they are missing (root on Debian/Ubuntu).
SYSTEM_PACKAGES := java:openjdk-17-jre-headless mvn:maven promtool:prometheus chromium:chromium
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "please install:$$missing" >&2; exit 1; fi; fi

# uv comes from PyPI into the venv, then makes the venv exactly what uv.lock says
# (uv itself is locked in the dev extra, so the sync keeps it).
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
$(UV):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev
	@touch $@

lock: | $(UV) ## resolve the dependencies of pyproject.toml again into uv.lock
	$(UV) lock

run: install ## start Kafka, PostgreSQL, the LLM simulator and the four services; stream a demo job (KAFKA_SECURITY=sasl: SASL and ACLs)
	$(if $(KAFKA_SECURITY),STREAMJOBS_KAFKA_SECURITY=$(KAFKA_SECURITY)) $(PY) -m deploy.localstack up
	@. $(abspath $(STACK_ENV)) && $(PY) -m deploy.demo
	@echo ""
	@echo "The stack keeps running. Try:"
	@echo "  source $(STACK_ENV)      # STREAMJOBS_URL, STREAMJOBS_TOKEN, ..."
	@echo "  make demo                # stream another job"
	@echo "  make status / make logs  # health of each process / where the logs are"
	@echo "  make stop                # stop everything"
	@echo "  make doctor              # check every part end to end with a live test job"
	@. $(abspath $(STACK_ENV)) && echo "Live dashboard: $$STREAMJOBS_URL/dashboard#token=$$STREAMJOBS_ADMIN_TOKEN"
	@echo "Metrics:   http://127.0.0.1:8080/metrics (gateway) :8081 (results) :8082 (notifier) :8083 (streamer)"
	@echo "Health:    /healthz and /readyz on the same ports"
	@echo "Grafana dashboard: deploy/grafana/  Prometheus config and alerts: deploy/prometheus/"
	@echo "Operations guide:  docs/operations.md"

# The fleet: BROKERS Kafka nodes (replication 3, min.insync.replicas 2) and INSTANCES of each
# service, under .state/fleet on ports of its own (gateways 28080, 28180, ...).
BROKERS   ?= 3
INSTANCES ?= 2
fleet: install ## start the fleet: BROKERS=3 Kafka nodes, INSTANCES=2 of each service; stream a demo job
	STREAMJOBS_FLEET_BROKERS=$(BROKERS) STREAMJOBS_FLEET_INSTANCES=$(INSTANCES) $(PY) -m deploy.localstack fleet
	@. $(abspath $(STACK_ENV)) && $(PY) -m deploy.demo
	@echo ""
	@echo "The fleet keeps running. Try:"
	@echo "  source $(STACK_ENV)      # STREAMJOBS_URL (gateway 0), STREAMJOBS_GATEWAY_URLS, ..."
	@echo "  make chaos               # kill -9 brokers and instances under load, count what was lost"
	@echo "  make status / make logs  # each process of the fleet / where it logs"
	@echo "  make stop                # stop everything"
	@echo "Every process, its pid, ports and log: .state/fleet/fleet.json"

# Against the running fleet (`make fleet` first): ROUNDS rounds of kill -9 and restart.
chaos: install ## kill -9 the busiest partition's leader and one instance of each service per round, under load; ROUNDS=20
	$(PY) -m deploy.chaos $(if $(ROUNDS),--rounds $(ROUNDS)) $(ARGS)

demo: install ## stream one more demo job through the running stack
	@. $(abspath $(STACK_ENV)) && $(PY) -m deploy.demo

stop: ## stop everything `make run` or `make fleet` started
	@test -x $(PY) && $(PY) -m deploy.localstack down || true

status: install ## show whether each process (of the stack or the fleet) is ready
	@$(PY) -m deploy.localstack status

doctor: install ## check prerequisites and the running stack end to end with a live test job
	@$(PY) -m deploy.doctor --monitor $(ARGS)

logs: ## where each process logs (the stack's and the fleet's)
	@ls -1 .state/stack/logs/*.log .state/stack/kafka/server.log .state/stack/postgres/postgres.log \
	  .state/fleet/logs/*.log .state/fleet/kafka-*/server.log .state/fleet/postgres/postgres.log 2>/dev/null || true

lint: install ## ruff (format + rules) and mypy strict
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: install ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Helm renders and lints deploy/helm/ in the tests. Built from source with the Go toolchain
# into .state (binary, module and build caches), so a clean clone needs only Go; the
# ldflags give it the version string a release build has.
GO          ?= $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
HELM_VERSION := v3.22.0
TOOLS_BIN   := .state/tools/bin
HELM        := $(TOOLS_BIN)/helm
.PHONY: helm
helm: $(HELM) ## install helm into .state/tools/bin when it is missing (needs Go)
$(HELM):
	@command -v $(GO) >/dev/null 2>&1 || { echo "building helm needs Go (https://go.dev/dl/); set GO=/path/to/go" >&2; exit 1; }
	@mkdir -p $(TOOLS_BIN) .state/go
	GOBIN=$(abspath $(TOOLS_BIN)) GOPATH=$(abspath .state/go) GOMODCACHE=$(abspath .state/go/mod) \
	  GOCACHE=$(abspath .state/go/cache) GOFLAGS=-modcacherw \
	  $(GO) install -ldflags "-X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION)" \
	  helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

test: install helm lint ## lint, then every test (unit, integration, e2e) against real Kafka and PostgreSQL
	$(PY) -m pytest

test-unit: install ## only the fast tests without I/O
	$(PY) -m pytest tests/unit

# BASE=old-bench-results.json prints each figure beside the old one; ONLY=user,gateway runs some.
bench: install ## measure every figure beside its target (<= 10 min); BASE=old.json compares; writes bench-results.json
	$(PY) -m tests.bench $(if $(BASE),--base '$(BASE)') $(if $(ONLY),--only '$(ONLY)') $(ARGS)

schemas: install ## regenerate docs/asyncapi.json and docs/schemas/ from the models
	$(PY) -m shared.asyncapi docs

# Without SCOPES the CLI's own default (jobs:read,jobs:write) applies: a default written
# inside $(or ...) would be split at its comma into two arguments.
token: install ## print an API token: make token USER_ID=alice [SCOPES=jobs:read,jobs:write]
	@. $(abspath $(STACK_ENV)) && $(PY) -m shared.token_cli '$(or $(USER_ID),demo)' $(if $(SCOPES),--scopes '$(SCOPES)')

.PHONY: revoke
revoke: install ## revoke a token by its id, honoured by every service within seconds: make revoke JTI=...
	@test -n "$(JTI)" || { echo "usage: make revoke JTI=<token id printed by make token>" >&2; exit 2; }
	@. ./$(STACK_ENV) && $(PY) -m shared.token_cli revoke $(JTI)

clean: stop ## stop the stack and the fleet and delete their data (keeps the Kafka jar cache)
	rm -rf .state/stack .state/fleet .state/stack.env .state/test
