# The two setup commands are `make lab` and `make test` (README).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= 0
LAB_INVENTORY := inventory/lab
SECRETS := $(CURDIR)/.lab/secrets.yml
PLAY := ansible-playbook -i $(LAB_INVENTORY) -e @$(SECRETS)
RELEASES ?= trixie
SCENARIOS ?= default broker_cluster logging

.PHONY: lab test bench bootstrap image secrets lab-up converge summary lab-destroy lint unit molecule

## Deploy the local lab: tooling, base image, containers, site.yml, summary.
lab: image secrets lab-up converge

## Run every test: lint, syntax and unit tests beside the molecule scenarios (scripts/test.sh).
test: image secrets
	scripts/test.sh $(SCENARIOS)

## Benchmark: deploy cost and cluster figures, written to bench/ (docs/benchmark.md).
bench: image secrets
	python3 scripts/bench.py $(BENCH_ARGS)

bootstrap:
	scripts/bootstrap.sh

image: bootstrap
	for release in $(RELEASES); do scripts/build-image.sh $$release; done

secrets:
	python3 scripts/lab-secrets.py $(SECRETS)

lab-up: bootstrap secrets
	$(PLAY) playbooks/lab/up.yml

## Re-run only the converge (site.yml) against the running lab, then the summary.
converge: secrets
	$(PLAY) playbooks/site.yml
	$(PLAY) playbooks/lab/summary.yml

summary: secrets
	$(PLAY) playbooks/lab/summary.yml

## Destroy the lab: containers, network, the lab CA and secrets.
lab-destroy: bootstrap
	$(PLAY) playbooks/lab/destroy.yml || ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/destroy.yml
	rm -rf $(LAB_INVENTORY)/.pki $(CURDIR)/.lab

lint: bootstrap
	yamllint --strict .
	ansible-lint
	for playbook in playbooks/*.yml playbooks/lab/*.yml playbooks/runbooks/*.yml; do \
	  [ -e "$$playbook" ] || continue; \
	  ansible-playbook -i $(LAB_INVENTORY) -e @$(SECRETS) --syntax-check "$$playbook" >/dev/null; \
	  echo "syntax ok: $$playbook"; \
	done

unit: bootstrap
	pytest -q tests/unit

## The first scenario's verify overlaps the others (scripts/molecule-scenarios.sh).
molecule: bootstrap secrets
	scripts/molecule-scenarios.sh $(SCENARIOS)
