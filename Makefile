# Waystation - the two commands a fresh Debian 12 machine needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# Debian packages the tests and benchmarks drive as real peers.
DEB_PACKAGES := dcmtk orthanc orthanc-dicomweb fuse3 libfuse3-3 tmux python3-venv systemd iproute2 nftables
# Debian packages that build and boot-test the appliance image (make image / image-test only).
IMAGE_PACKAGES := mmdebstrap arch-test qemu-system-x86 qemu-system-arm qemu-user-static mtools dosfstools e2fsprogs fdisk bmap-tools ovmf qemu-efi-aarch64 systemd-boot-efi zstd dcmtk
ARCH ?= amd64
IMAGE_OUT ?= build/image
# Reproducible images: every time stamp in them is the last commit's.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)

.PHONY: run test lint unit deps deps-run apt-install venv bench bench-wan soak clean console-screenshots fuzz image image-test image-ci

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Debian packages: installed only when missing (needs root or sudo).
deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DEB_PACKAGES)"

## What `make run` needs on a bare Debian 12: Python's venv module.
deps-run:
	@$(MAKE) --no-print-directory apt-install PACKAGES="python3-venv"

apt-install:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## Start the router on the embedded default configuration (no file needed).
run: deps-run $(STAMP)
	$(VENV)/bin/waystation run

lint: $(STAMP)
	$(VENV)/bin/ruff check router tui appliance hardware tests bench
	$(VENV)/bin/ruff format --check router tui appliance hardware tests bench
	$(VENV)/bin/mypy

## Everything CI runs: lint, types, and the whole test suite (soaks and benchmarks excluded).
test: deps $(STAMP) lint
	$(PY) -m pytest -m "not slow and not image" -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

## Long soaks: 1000 power cuts and 200 kill -9s of ingest and delivery, then the whole-pipeline
## soak (router and hub, both PACS, a flapping link): SOAK_CUTS cuts, or fewer if SOAK_MINUTES
## (0: no limit) runs out first, with up to SOAK_TRAFFIC seconds of modality traffic before each
## cut; its figures go to var/soak-report.txt.
SOAK_CUTS ?= 1000
SOAK_MINUTES ?= 0
SOAK_TRAFFIC ?= 1.0
soak: deps $(STAMP)
	WAYSTATION_SOAK=1 $(PY) -m pytest -q -s --timeout=0 tests/crash/test_powerloss.py tests/crash/test_kill9.py \
	  tests/crash/test_delivery_crash.py
	@mkdir -p var
	WAYSTATION_SOAK=1 WAYSTATION_SOAK_CUTS=$(SOAK_CUTS) WAYSTATION_SOAK_MINUTES=$(SOAK_MINUTES) \
	  WAYSTATION_SOAK_TRAFFIC=$(SOAK_TRAFFIC) WAYSTATION_SOAK_REPORT=var/soak-report.txt $(PY) -m pytest -q -s --timeout=0 tests/crash/test_pipeline_soak.py

## Long property-based fuzzing of every parser of untrusted input (CI runs a short profile).
fuzz: deps $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q --timeout=0 tests/security/test_fuzz.py \
	  tests/security/test_fuzz_hub.py

## Benchmarks against DCMTK and Orthanc in the same run; writes docs/benchmarks.md.
bench: deps $(STAMP)
	$(PY) -m bench.ingest --out docs/benchmarks.md && $(PY) -m bench.delivery --out docs/benchmarks.md \
	  && $(PY) -m bench.control --out docs/benchmarks.md

## WAN benchmark: C-STORE and raw TCP through the namespace link emulator (needs root: network
## namespaces and TUN); replaces the WAN section of docs/benchmarks.md.
bench-wan: deps $(STAMP)
	$(PY) -m bench.wan --out docs/benchmarks.md

## Re-record the console's snapshots and copy them into the operator guide's pictures.
console-screenshots: $(STAMP)
	$(PY) -m pytest -q tests/unit/test_console_snapshots.py -k "not operator_guide" --snapshot-update
	@mkdir -p docs/img
	@for f in tests/unit/__snapshots__/test_console_snapshots/*.svg; do \
	  case=$$(basename "$$f" .svg | sed -e 's/.*\[//' -e 's/\]//' -e 's/_/-/g'); \
	  cp "$$f" "docs/img/console-$$case.svg"; done

## The flashable appliance image for ARCH=amd64 (UEFI x86) or ARCH=arm64 (Raspberry Pi 4) in
## build/image/ARCH: image.zst, .bmap, manifest, SHA256SUMS (docs/image.md). Needs root.
image: $(STAMP)
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(IMAGE_PACKAGES)"
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) image/build.sh $(ARCH) $(IMAGE_OUT)/$(ARCH) $(PY)

## Build the image, boot it under QEMU, commission it, route a study through it, cut its power
## mid-ingest (IMAGE_POWER_CUTS times), and check root is read-only and nothing was lost.
IMAGE_POWER_CUTS ?= 3
image-test: image
	WAYSTATION_IMAGE_ARCH=$(ARCH) WAYSTATION_IMAGE_DIR=$(IMAGE_OUT)/$(ARCH) \
	  WAYSTATION_IMAGE_POWER_CUTS=$(IMAGE_POWER_CUTS) \
	  $(PY) -m pytest -m image -s -q -x -p no:cacheprovider --basetemp=$(IMAGE_OUT)/test-$(ARCH) tests/image/test_image.py

## CI: both architectures built and boot-tested; the power cuts on amd64 (the faster emulation).
image-ci:
	@$(MAKE) --no-print-directory image-test ARCH=amd64 IMAGE_POWER_CUTS=3
	@$(MAKE) --no-print-directory image-test ARCH=arm64 IMAGE_POWER_CUTS=0

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
