# nodemedic: `make run` runs the agent here; `make test` runs every check CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/nodemedic.yaml
# Debian packages: building systemd-python needs the first four; the tests need the rest.
APT_BUILD := python3-venv python3-dev libsystemd-dev pkg-config gcc
# systemd: systemd-analyze, systemd-sysusers and systemd-tmpfiles check the unit files; a
# booted Debian 12 has it, a debian:12 container image does not. systemd-container and
# debootstrap: tests/nspawn.py boots a real systemd from a cached Debian rootfs. chromium: the
# status page tests drive it headless with Playwright (never `playwright install`).
APT_TEST := e2fsprogs mount util-linux mosquitto mosquitto-clients haproxy etcd-server \
    etcd-client systemd systemd-container debootstrap lintian chromium chromium-driver iproute2
# Debian's mosquitto package (like etcd-server, haproxy and prometheus-node-exporter) starts
# a system daemon from its postinst on a machine whose policy allows it. The tests never use
# them (fixtures run their own on ephemeral loopback ports), so while installing anything
# missing we deny service starts with a temporary /usr/sbin/policy-rc.d ("exit 101", see
# invoke-rc.d(8)) unless one already exists, and stop the system broker if it got started
# anyway: CI leaves no stray daemon.
POLICY_RC := /usr/sbin/policy-rc.d
export NODEMEDIC_PROMTOOL := $(CURDIR)/.cache/promtool/usr/bin/promtool

.PHONY: help run test check lint typecheck pytest bench bench-mqtt bench-units bench-fleet venv clean apt-test docs deb

help:
	@echo "make run    - set up .venv and run the agent with $(CONFIG)"
	@echo "make test   - install test dependencies and run lint, types and the whole test suite"
	@echo "make bench  - every benchmark under bench/ and a summary table (QUICK=1: about 6 min)"
	@echo "make bench-mqtt - MQTT publish rate, latency and outbox drain beside mosquitto_pub"
	@echo "make bench-units - systemd in nspawn: D-Bus round trips, detection and remediation latency"
	@echo "make docs   - regenerate docs/configuration.md from the config models"
	@echo "make deb    - build dist/nodemedic_<version>_<arch>.deb (packaging/deb/build)"

$(BIN)/.installed: pyproject.toml
	@scripts/ensure-apt $(APT_BUILD)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed

run: venv
	PYTHONOPTIMIZE=2 $(BIN)/nodemedic run --config $(CONFIG)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

apt-test:
	@set -euo pipefail; \
	missing=; \
	for pkg in $(APT_TEST); do \
	    dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "install ok installed" \
	        || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ] || [ "$$(id -u)" -ne 0 ]; then \
	    scripts/ensure-apt $(APT_TEST); exit 0; \
	fi; \
	made_policy=; \
	if [ ! -e $(POLICY_RC) ]; then \
	    printf '#!/bin/sh\n# nodemedic make: no service starts while installing test packages\nexit 101\n' \
	        > $(POLICY_RC); \
	    chmod 755 $(POLICY_RC); made_policy=1; \
	fi; \
	trap '[ -z "$$made_policy" ] || rm -f $(POLICY_RC)' EXIT; \
	scripts/ensure-apt $(APT_TEST); \
	pidfile=/run/mosquitto/mosquitto.pid; \
	if [ -s $$pidfile ] && kill -0 "$$(cat $$pidfile)" 2>/dev/null; then \
	    echo "make: stopping the system mosquitto that the package started" >&2; \
	    /etc/init.d/mosquitto stop >/dev/null 2>&1 || kill "$$(cat $$pidfile)"; \
	fi

pytest: venv apt-test
	@scripts/ensure-promtool
	@scripts/ensure-nspawn-rootfs
	$(BIN)/pytest

check: lint typecheck

test: lint typecheck pytest

# Every benchmark, then one summary table (bench/report.py); JSON under bench/results/.
# Takes about 25 min here (agent overhead 4 process counts x 2 runs x 60 s is most of it);
# QUICK=1 runs each once and shorter, about 6 min. The units bench needs root (nspawn).
# prometheus-node-exporter is the reference the overhead and /metrics figures stand beside;
# it is installed through apt-test's guard, so its package starts no system daemon.
APT_BENCH := prometheus-node-exporter
QUICK ?=
bench: venv apt-test
	@$(MAKE) --no-print-directory apt-test APT_TEST="$(APT_BENCH)"
	$(BIN)/python -m bench.agent_overhead $(if $(QUICK),--quick,--repeat 2)
	$(BIN)/python -m bench.metrics_scrape $(if $(QUICK),--quick,)
	$(BIN)/python -m bench.process_scan $(if $(QUICK),--counts 500 --repeat 3,)
	$(BIN)/python -m bench.mqtt_throughput $(if $(QUICK),--events 2000 --repeat 1,)
	$(BIN)/python -m bench.kmsg_flood $(if $(QUICK),--lines 20000,)
	$(BIN)/python -m bench.status_page $(if $(QUICK),--repeat 50,)
	@if [ "$$(id -u)" -eq 0 ]; then scripts/ensure-nspawn-rootfs && \
	    $(BIN)/python -m bench.units_latency $(if $(QUICK),--transitions 10 --calls 50,) && \
	    $(BIN)/python -m bench.detection_latency $(if $(QUICK),--rounds 20 --disk-rounds 10,) && \
	    $(BIN)/python -m bench.remediation_latency $(if $(QUICK),--rounds 10,); \
	else echo "bench: units, detection and remediation latency skipped (need root)"; fi
	$(BIN)/python -m bench.report

# MQTT publishing through the agent's outbox beside mosquitto_pub, on a loopback broker.
bench-mqtt: venv apt-test
	$(BIN)/python -m bench.mqtt_throughput

# systemd booted in nspawn: D-Bus round trips, the latency from a unit's state change to the
# rules, from a breach (a unit failing, a loop-mounted disk filling) to its event at an MQTT
# subscriber, and from a unit's crash to the remediation engine having it active again (root).
bench-units: venv apt-test
	@scripts/ensure-nspawn-rootfs
	$(BIN)/python -m bench.units_latency
	$(BIN)/python -m bench.detection_latency
	$(BIN)/python -m bench.remediation_latency

# 1,000 simulated agents on one Mosquitto and etcd: fleet command fan-out and the budget.
bench-fleet: venv apt-test
	$(BIN)/python -m bench.fleet

docs: venv
	$(BIN)/python -m agent.config_doc --write

# The package's virtualenv is built with Debian's python3 (APT_BUILD has what
# systemd-python needs to compile); see packaging/README.md.
deb: venv
	packaging/deb/build dist

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache state
