# tpmsniff — everything installs what it needs: `make demo`, `make test`, `make bench`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := swtpm swtpm-tools tpm2-tools libtss2-dev libtss2-tcti-pcap0 tshark \
	qemu-system-x86 seabios socat pkg-config gcc python3-dev python3-venv systemd \
	libvirt-daemon-system libvirt-clients busybox-static cpio sigrok-cli
# the Linux guest of tests/integration/test_linux_guest.py: Debian's 6.12 kernel (bookworm-backports)
GUEST := out/guest
BACKPORTS := /etc/apt/sources.list.d/bookworm-backports.sources
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps guest venv native sanitize tsan test unit lint demo bench man soak clean

deps: ## install the Debian packages that are missing
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
			>/dev/null || exit 1; \
	fi

$(VENV)/.installed: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

native: $(VENV)/.installed ## build the native relay (--relay native) with cffi, in place
	$(PY) -m tpmsniff._native.build

venv: deps $(VENV)/.installed native $(GUEST)/vmlinuz

guest: $(GUEST)/vmlinuz ## fetch the guest kernel (Debian 6.12 from bookworm-backports) into out/guest

$(GUEST)/vmlinuz: | deps
	@grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ || { \
		uri=$$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | awk \
			'/^URIs:/ && $$2 !~ /security/ {print $$2; exit} /^deb / && $$0 ~ / bookworm / {print $$2; exit}'); \
		[ -n "$$uri" ] || { echo "no Debian mirror in the apt sources to add bookworm-backports from" >&2; exit 1; }; \
		printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$$uri" \
			| $(SUDO) tee $(BACKPORTS) >/dev/null; }
	@pkg=$$(apt-cache depends -t bookworm-backports linux-image-amd64 2>/dev/null \
		| awk '/Depends: linux-image-6\.12/ {print $$2; exit}'); \
	if [ -z "$$pkg" ]; then $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		pkg=$$(apt-cache depends -t bookworm-backports linux-image-amd64 \
		| awk '/Depends: linux-image-6\.12/ {print $$2; exit}'); fi; \
	[ -n "$$pkg" ] || { echo "no linux-image-6.12 in bookworm-backports" >&2; exit 1; }; \
	rm -rf $(GUEST).tmp && mkdir -p $(GUEST).tmp && cd $(GUEST).tmp && \
	apt-get download -q -t bookworm-backports "$$pkg" >/dev/null && \
	dpkg-deb -x ./*.deb root && cp root/boot/vmlinuz-* vmlinuz && cp root/boot/config-* config && \
	echo "$$pkg" > package && rm -rf root ./*.deb && cd - >/dev/null && \
	rm -rf $(GUEST) && mv $(GUEST).tmp $(GUEST) && echo "guest kernel: $$(cat $(GUEST)/package)"

test: lint ## lint, then the whole suite (unit + integration with real swtpm, tpm2-tools, tshark, QEMU) under coverage, then `make sanitize tsan`
	rm -rf .coverage-data
	$(PY) -m coverage run -m pytest -q -p no:cacheprovider
	@$(PY) -m coverage combine -q
	@echo "line coverage of model/, codec/, inputs/, check/ (aim: >= 90%):"
	@$(PY) -m coverage report --fail-under=85
	$(MAKE) sanitize tsan

# The C relay as a parser facing an attacker: built with ASan + UBSan (any report aborts
# the daemon, so the test fails) and malloc/epoll_ctl fault injection, then the relay
# tests that drive it run against that build (in tpmsniff only: TPMSNIFF_SNIFF_*).
SAN_OUT := out/native-sanitize
SAN_TESTS := tests/integration/test_relay_differential.py tests/integration/test_relay_gaps.py \
	tests/integration/test_relay_faults.py
sanitize: venv ## the relay tests against the C relay under ASan+UBSan, with fault injection
	$(PY) -m tpmsniff._native.build --variant sanitize --out $(SAN_OUT)
	TPMSNIFF_SNIFF_TPMSNIFF_NATIVE=$$(ls $(SAN_OUT)/_relay*.so) \
	TPMSNIFF_SNIFF_LD_PRELOAD=$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so) \
	TPMSNIFF_SNIFF_ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	TPMSNIFF_SNIFF_UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	$(PY) -m pytest -q -p no:cacheprovider $(SAN_TESTS)

TSAN_OUT := out/native-tsan
tsan: venv ## the relay tests against the C relay under ThreadSanitizer (the thread hand-off)
	$(PY) -m tpmsniff._native.build --variant tsan --out $(TSAN_OUT)
	TPMSNIFF_SNIFF_TPMSNIFF_NATIVE=$$(ls $(TSAN_OUT)/_relay*.so) \
	TPMSNIFF_SNIFF_LD_PRELOAD=$$(gcc -print-file-name=libtsan.so) \
	TPMSNIFF_SNIFF_TSAN_OPTIONS=halt_on_error=1:abort_on_error=1 \
	$(PY) -m pytest -q -p no:cacheprovider $(SAN_TESTS)

unit: venv
	$(PY) -m pytest -q tests/unit

SOAK_SECONDS ?= 600
soak: venv ## the chaos test for SOAK_SECONDS (600): hostile clients, swtpm restarts, SIGHUP
	TPMSNIFF_CHAOS_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q -s -p no:cacheprovider tests/integration/test_soak.py

lint: venv ## ruff (lint + format) and mypy (strict for model/ and codec/)
	$(PY) -m ruff check tpmsniff tests bench scripts
	$(PY) -m ruff format --check tpmsniff tests bench scripts
	$(PY) -m mypy

demo: venv ## private swtpm + tpmsniff + a seal/unseal workload; shows the console
	$(PY) bench/demo.py

bench: venv ## one table: latency, tail, start-up, 4-client throughput, RSS, CPU vs socat
	$(PY) -m compileall -q tpmsniff  # as installed: measured start-up includes no compiling
	$(PY) bench/bench.py

man: venv ## regenerate docs/tpmsniff.1 from the argument parsers
	$(PY) -m tpmsniff.cli.manpage > docs/tpmsniff.1

clean:
	rm -rf $(VENV) out .pytest_cache .coverage-data tpmsniff/_native/_relay.*
