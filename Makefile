# The two set-up commands of the README: `make run` and `make test`. Each makes .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench lint clean system-deps libvirt-deps client-deps etcd-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: setup.py $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# libvirt-python builds against the C library's headers (libvirt-dev, found through pkg-config)
$(VENV)/.installed-test: setup.py $(VENV)/.installed | libvirt-deps
	$(BIN)/python -m pip install --quiet -e '.[test,libvirt]'
	touch $@

run: $(VENV)/.installed
	mkdir -p var/state
	$(BIN)/xend-ext serve --state-dir var/state --backend sim

# curl is what the shell example and the README's curl session use.
system-deps: client-deps etcd-deps
	@command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends curl)
	@scripts/realxen/install-deps.sh && scripts/realxen/build.sh  # the real-Xen stage: QEMU, Xen 4.17, a dom0 kernel
	@scripts/realkvm/install-deps.sh && scripts/realkvm/build.sh  # the real-KVM stage: libvirtd, its QEMU driver, the guest

# The pool tests (tests/test_cluster.py) run three etcd members on loopback: Debian's etcd 3.4.
etcd-deps:
	@command -v etcd >/dev/null && command -v etcdctl >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server etcd-client)

# The example clients in other languages (examples/clients/, run by tests/test_examples.py): Go with
# kolo/xmlrpc, Java with aXMLRPC, Perl with RPC::XML from Debian; Node with npm's xmlrpc. Only what
# is missing is installed (Node and npm are looked for as commands: they may come from elsewhere).
CLIENT_DEBS := golang-go golang-github-kolo-xmlrpc-dev default-jdk-headless libaxmlrpc-java perl librpc-xml-perl
client-deps:
	@missing=$$(for p in $(CLIENT_DEBS); do dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | \
	  grep -qx installed || echo $$p; done; command -v node >/dev/null || echo nodejs; \
	  command -v npm >/dev/null || echo npm); \
	[ -z "$$missing" ] || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing)
	@[ -d examples/clients/node/node_modules/xmlrpc ] || \
	  (cd examples/clients/node && npm ci --silent --no-audit --no-fund)

libvirt-deps:
	@pkg-config --exists libvirt 2>/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libvirt-dev pkg-config)

# The real-Xen stage first, alone on the CPUs (emulated machines, one at a time but for the
# migration test's two; no xdist; bounded at twelve minutes: 454 s on the idle 2-core machine), then the real-KVM stage alone (a private libvirtd, measured CPU shares; five minutes),
# then the rest on two workers. All always run; any failing fails the target.
test: system-deps $(VENV)/.installed-test
	@status=0; \
	timeout --signal=INT --kill-after=30 720 $(BIN)/python -m pytest -m realxen -n 0 || status=1; \
	timeout --signal=INT --kill-after=30 300 $(BIN)/python -m pytest -m realkvm -n 0 || status=1; \
	$(BIN)/python -m pytest -m "not realxen and not realkvm" || status=1; \
	exit $$status

bench: $(VENV)/.installed
	$(BIN)/python -m bench --scale

lint: $(VENV)/.installed-test
	$(BIN)/ruff check xend_ext xenapi_classes tests bench

clean:
	rm -rf $(VENV) var build *.egg-info
