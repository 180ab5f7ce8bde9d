SHELL := /bin/bash
# OSAGO edge: top-level build.
#   make          build the nginx module and the tools into build/
#   make run      install what is missing, build, start the local stack (foreground)
#   make test     install what is missing, build, run every test
#   make bench    run the benchmarks in bench/ (minutes; figures go to build/bench/*.md,
#                 the sessions' records are in docs/BENCHMARKS.md)

NGX_SRC    ?= /usr/share/nginx/src
BUILD      := build
NGX_BUILD  := $(CURDIR)/build/nginx
MODULE     := build/nginx/ngx_http_osago_module.so

CC         ?= cc
CFLAGS     ?= -O2 -g
TOOL_FLAGS := -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror
SAN_FLAGS  := -fsanitize=address,undefined -fno-omit-frame-pointer

MODULE_SRCS := config $(wildcard ngx_osago_module/*.c ngx_osago_module/*.h)
OSAGOCTL_SRCS := $(wildcard tools/osagoctl/*.c)
OSAGOCTL_HDRS := $(wildcard tools/osagoctl/*.h)

.PHONY: all module tools deps run test bench clean demo

all: module tools

module: $(MODULE)
tools: $(BUILD)/osagoctl $(BUILD)/devbroker $(BUILD)/insurer-sim

deps:
	@tools/install-deps.sh

# configure is slow (~20 s): rerun it only when the addon script changes.
build/nginx/Makefile: config $(wildcard $(NGX_SRC)/conf_flags)
	$(if $(word 2,$(CURDIR)),$(error nginx's configure cannot build from a path with spaces \
	    ($(CURDIR)): clone the repository into a path without))
	@mkdir -p $(NGX_BUILD)
	cd $(NGX_SRC) && . ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}" \
	    --add-dynamic-module=$(CURDIR) --builddir=$(NGX_BUILD) > $(NGX_BUILD)/configure.log \
	    || { tail -n 20 $(NGX_BUILD)/configure.log >&2; exit 1; }
	@touch $@

$(MODULE): build/nginx/Makefile $(MODULE_SRCS)
	$(MAKE) -s -f $(NGX_BUILD)/Makefile -C $(NGX_SRC) modules

$(BUILD)/osagoctl: $(OSAGOCTL_SRCS) $(OSAGOCTL_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(TOOL_FLAGS) $(CFLAGS) -o $@ $(OSAGOCTL_SRCS) -lhiredis -lcrypto

# The tests use the same tools, built with sanitizers.
$(BUILD)/san/osagoctl: $(OSAGOCTL_SRCS) $(OSAGOCTL_HDRS)
	@mkdir -p $(BUILD)/san
	$(CC) $(TOOL_FLAGS) $(CFLAGS) $(SAN_FLAGS) -o $@ $(OSAGOCTL_SRCS) -lhiredis -lcrypto

# deps first, then the build in a make of its own: with -j, compiling must not race apt-get
run: deps
	@$(MAKE) --no-print-directory all
	tools/run-stack

# needs `make run` in another terminal
demo: tools
	tools/demo

# what the tests run, besides `all` (the included makefiles add theirs)
TEST_BINS := $(BUILD)/san/osagoctl $(BUILD)/san/devbroker $(BUILD)/san/insurer-sim

# t/65 and t/72 hold more sockets than a login shell's 1024: the soft limit goes up to the hard
test: deps
	@$(MAKE) --no-print-directory all $(TEST_BINS)
	ulimit -Sn $$(ulimit -Hn) 2>/dev/null || true; \
	    OSAGO_BUILD="$(CURDIR)/$(BUILD)" prove -j2 -r t/

bench: deps
	@$(MAKE) --no-print-directory all
	bench/run-all

clean:
	rm -rf $(BUILD)

# --- application validator (unit tests, fuzz; the worker's event decoder is fuzzed here too) ---
APP_SRCS   := ngx_osago_module/osago_application.c
APP_HDRS   := ngx_osago_module/osago_application.h
FUZZ_CC    ?= clang
FUZZ_TIME  ?= 20
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined

.PHONY: fuzz

$(BUILD)/san/test_osago_application: t/unit/test_osago_application.c $(APP_SRCS) $(APP_HDRS)
	@mkdir -p $(BUILD)/san
	$(CC) $(TOOL_FLAGS) $(CFLAGS) $(SAN_FLAGS) -Ingx_osago_module -o $@ \
	    t/unit/test_osago_application.c $(APP_SRCS) -lcmocka -lyajl

TEST_BINS += $(BUILD)/san/test_osago_application

$(BUILD)/fuzz/fuzz_osago_application: fuzz/fuzz_osago_application.c $(APP_SRCS) $(APP_HDRS)
	@mkdir -p $(BUILD)/fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) -Ingx_osago_module -o $@ fuzz/fuzz_osago_application.c $(APP_SRCS) -lyajl

$(BUILD)/fuzz/fuzz_worker_event: fuzz/fuzz_worker_event.c worker/event.c worker/event.h
	@mkdir -p $(BUILD)/fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) -Iworker -o $@ fuzz/fuzz_worker_event.c worker/event.c -lyajl

# Each target runs FUZZ_TIME on a copy of its seed corpus, so fuzz/corpus*/ only ever hold the
# curated seeds: the application validator (fuzz/corpus/), then the worker's event decoder
# (fuzz/corpus-event/).
fuzz: deps
	@$(MAKE) --no-print-directory $(BUILD)/fuzz/fuzz_osago_application \
	    $(BUILD)/fuzz/fuzz_worker_event
	rm -rf $(BUILD)/fuzz/corpus $(BUILD)/fuzz/corpus-event $(BUILD)/fuzz/artifacts
	mkdir -p $(BUILD)/fuzz/corpus $(BUILD)/fuzz/corpus-event $(BUILD)/fuzz/artifacts
	cp fuzz/corpus/* $(BUILD)/fuzz/corpus/
	cp fuzz/corpus-event/* $(BUILD)/fuzz/corpus-event/
	$(BUILD)/fuzz/fuzz_osago_application -max_total_time=$(FUZZ_TIME) -max_len=4096 \
	    -artifact_prefix=$(BUILD)/fuzz/artifacts/ -print_final_stats=1 $(BUILD)/fuzz/corpus
	$(BUILD)/fuzz/fuzz_worker_event -max_total_time=$(FUZZ_TIME) -max_len=8192 \
	    -artifact_prefix=$(BUILD)/fuzz/artifacts/ -print_final_stats=1 $(BUILD)/fuzz/corpus-event

# --- local-stack tools (Kafka mock, simulated insurers) and the worker ---
include tools/devbroker/build.mk
include tools/insurer-sim/build.mk
include worker/build.mk
