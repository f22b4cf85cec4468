# Every target loops over the Go modules of the workspace. The daemons'
# modules come from the daemon table, deploy/daemons, as in scripts/stack.
DAEMONS := $(shell awk '!/^[[:space:]]*(\#|$$)/ { print $$2 }' deploy/daemons)
# Daemons built and tested but not yet started by the stack (none now).
STAGED :=
MODULES := sidecar $(DAEMONS) $(STAGED) admin integration
DAEMON_MODULES := sidecar $(DAEMONS) $(STAGED)
# Modules with unit tests but no daemon (and no fuzz targets).
TOOL_MODULES := admin
GO ?= go
FUZZTIME ?= 10s
STACK_DIR ?= /var/tmp/chatmail-stack
# The Debian release whose Postfix and Dovecot a stack runs: 12, the host's;
# 13, those of a Debian 13 tree (scripts/debian13-tree) built once into
# DEBIAN13_TREE, outside the repository.
STACK_DEBIAN ?= 12
DEBIAN13_TREE ?= /var/cache/chatmail-ci/trixie
export DEBIAN13_TREE
DEMO_DIR ?= /var/tmp/chatmail-demo

.PHONY: all build test unit integration integration-12 integration-13 debian13-tree fuzz lint bench up down deps demo demo-down

all: build

build:
	@for m in $(MODULES); do (cd $$m && $(GO) build ./...) || exit 1; done
	$(GO) build -o bin/ $(foreach m,$(DAEMONS) $(STAGED) $(TOOL_MODULES),chatmail.dev/$(m)/cmd/...)

deps:
	scripts/install-deps

# The whole suite, as CI runs it: unit tests, short fuzz runs, and the
# integration tests against real Postfix, Dovecot, PostgreSQL and Delta Chat,
# those of Debian 12 and those of Debian 13.
test: deps unit fuzz integration

unit:
	@for m in $(DAEMON_MODULES) $(TOOL_MODULES); do (cd $$m && $(GO) test -race -count=1 ./...) || exit 1; done

integration: integration-12 integration-13

integration-12:
	@echo "integration: Debian 12 (the host's Postfix and Dovecot)"
	cd integration && STACK_DEBIAN=12 $(GO) test -count=1 -timeout 20m ./...

integration-13: debian13-tree
	@echo "integration: Debian 13 (Postfix and Dovecot of $(DEBIAN13_TREE))"
	cd integration && STACK_DEBIAN=13 $(GO) test -count=1 -timeout 20m ./...

# Built once (about 2 minutes), then reused in under a second.
debian13-tree:
	scripts/debian13-tree $(DEBIAN13_TREE)

fuzz:
	GO=$(GO) scripts/fuzz $(FUZZTIME) $(DAEMON_MODULES)

lint:
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@for m in $(MODULES); do \
		(cd $$m && $(GO) vet ./... && GOWORK=off $(GO) build ./... && GOWORK=off $(GO) vet ./... && $(GO) mod tidy -diff) || exit 1; \
	done
	@bash -n scripts/stack scripts/install-deps scripts/bench scripts/fuzz scripts/lint scripts/debian13-tree
	GO=$(GO) scripts/lint $(MODULES)

bench:
	scripts/bench

# The README's first command: a private server with two real Delta Chat
# clients chatting through it, and what the server holds afterwards.
demo: deps
	cd integration && $(GO) run ./cmd/chatmail-demo -dir $(DEMO_DIR)

demo-down:
	scripts/stack down $(DEMO_DIR)

# A private server in $(STACK_DIR), for trying things out (see README);
# make up STACK_DEBIAN=13 runs Debian 13's Postfix and Dovecot.
up: deps
	scripts/stack up $(STACK_DIR) --debian $(STACK_DEBIAN)
	@cat $(STACK_DIR)/stack.env

down:
	scripts/stack down $(STACK_DIR)
