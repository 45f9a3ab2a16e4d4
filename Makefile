# roomagent: two set-up commands on a fresh Debian machine (see README):
#   make run    a demo room on the simulated HAL (creates .venv, installs Mosquitto if missing)
#   make test   the whole test suite (creates .venv, installs the Debian services the tests start, runs pytest)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
ARGS ?=

.PHONY: test-deps run test browser-test lint bench demo fuzz soak reliability image image-tools image-test mosquitto cluster clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# Without ARGS: the first-run demo room (docs/daemon.md, "First run"): a private Mosquitto (installed
# here when missing, like the test services; the demo runs offline when that is not possible), demo
# trust root and keys, the sim camera's E2EE stream to a local receiver. With ARGS: exactly those.
RUN_DEBS ?= mosquitto
run: $(STAMP)
	@$(MAKE) --no-print-directory test-deps TEST_DEBS="$(RUN_DEBS)" || \
	  echo "could not install $(RUN_DEBS): the demo room runs without a broker"
	$(BIN)/roomagent run $(if $(ARGS),$(ARGS),--demo)

# Real services the tests start themselves (brokers, SFU, browser, ...), from Debian's packages: one list,
# installed when missing (root, or sudo). Add a package here, never a second install step.
TEST_DEBS ?= mosquitto dbus dbus-daemon libspeexdsp1 libsdl2-2.0-0 rauc squashfs-tools openssl \
	janus chromium chromium-driver iproute2 nats-server
test-deps:
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing from Debian packages"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Kept for muscle memory: the broker alone.
mosquitto:
	@$(MAKE) --no-print-directory test-deps TEST_DEBS=mosquitto

# A local three-node NATS cluster (JetStream, MQTT 3.1.1 listeners) until Ctrl-C; prints its MQTT URLs.
cluster: $(STAMP)
	@$(MAKE) --no-print-directory test-deps TEST_DEBS=nats-server
	$(BIN)/python -m agent.fleet.brokers --nodes 3

test: $(STAMP) test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# A room, Janus and headless Chromium meet with SFrame end to end (docs/webrtc.md); also part of `make test`.
browser-test: $(STAMP) test-deps
	$(BIN)/python -m pytest -m browser -s $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check agent hal tests
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/roomagent bench all --json

# The room-system image (docs/image.md): root is needed for debootstrap/chroot. The debootstrapped base
# is cached under IMAGE_CACHE (outside the tree), so rebuilds and CI clones take seconds.
IMAGE_CACHE ?= /var/cache/roomagent-image
export IMAGE_CACHE

image-tools:
	@missing=""; for t in debootstrap:debootstrap qemu-system-x86_64:qemu-system-x86 mke2fs:e2fsprogs \
	  cpio:cpio busybox:busybox-static; do command -v $${t%%:*} >/dev/null 2>&1 || [ -x /bin/$${t%%:*} ] \
	  || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing from Debian packages"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

image: $(STAMP) image-tools
	HOST_PYTHON=$(abspath $(BIN)/python) images/build.sh

# Boots the image under QEMU (KVM when it really works, else TCG) and fails unless every in-guest
# check passed; then systemd-analyze verify against the image's root file system.
image-test: image
	$(BIN)/python images/boot_test.py
	IMAGE_ROOTFS=$(CURDIR)/images/out/rootfs $(BIN)/python -m pytest -q -m image tests/test_systemd_units.py

# Two simulated rooms exchanging E2EE video over loopback (docs/media.md); Ctrl-C or ARGS="--seconds 20".
demo: $(STAMP)
	$(BIN)/roomagent demo $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info images/out

# Fuzzing: each fuzz/fuzz_*.py for FUZZ_SECONDS under atheris (hypothesis where atheris is
# missing); corpora accumulate in FUZZ_DIR between runs. Fails on the first target that crashes.
FUZZ_SECONDS ?= 60
FUZZ_DIR ?= $(CURDIR)/.fuzz
fuzz: $(STAMP)
	@set -e; for t in fuzz/fuzz_*.py; do \
	  echo "== $$t ($(FUZZ_SECONDS) s)"; \
	  mkdir -p $(FUZZ_DIR)/artifacts; \
	  ROOMAGENT_FUZZ_DIR=$(FUZZ_DIR) $(BIN)/python $$t -max_total_time=$(FUZZ_SECONDS) -timeout=20 -error_exitcode=70 \
	    -artifact_prefix=$(FUZZ_DIR)/artifacts/$$(basename $$t .py)- -print_final_stats=1 2>$(FUZZ_DIR).log || { rc=$$?; tail -40 $(FUZZ_DIR).log; \
	    [ $$rc = 77 ] && continue; exit $$rc; }; \
	  grep -E '^Done [0-9]+ runs' $(FUZZ_DIR).log; \
	done

# Soak: the agent on the sim HAL with pushes, key rotations and faults; figures in JSON.
SOAK_SECONDS ?= 1800
soak: $(STAMP) test-deps
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/roomagent bench soak --json -- --seconds $(SOAK_SECONDS)

# Fault-injection suite, also part of `make test`.
reliability: $(STAMP) test-deps
	$(BIN)/python -m pytest -m reliability tests/reliability $(PYTEST_ARGS)
