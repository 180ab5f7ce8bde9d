# osago-worker (worker/) and its cmocka unit tests. Included by the top Makefile; uses its
# BUILD, CC, CFLAGS, TOOL_FLAGS and SAN_FLAGS.
#
#   $(BUILD)/osago-worker            the daemon
#   $(BUILD)/san/osago-worker        the same with ASan/UBSan (what the end-to-end tests run)
#   $(BUILD)/san/test_worker_<unit>  unit tests of worker/<unit>.c, run by t/31-worker-unit.t
#
# Every worker/*.c joins the binary, so new role files need no edit here.

# An include placed before the Makefile's first rule must not make a worker target the default.
WORKER_SAVED_GOAL := $(.DEFAULT_GOAL)

WORKER_SRCS     := $(wildcard worker/*.c)
WORKER_HDRS     := $(wildcard worker/*.h)
WORKER_CPPFLAGS := $(shell pkg-config --cflags libpq 2>/dev/null || echo -I/usr/include/postgresql)
WORKER_LIBS     := -lrdkafka -lpq -lhiredis -lyajl -lcurl -lmicrohttpd -lpthread

# Each unit test links only the file it tests: the pure parts of the worker stay pure.
WORKER_UNITS      := event retry config quote_state insurers pg_hosts completed_ring quote_cache
WORKER_UNIT_BINS  := $(patsubst %,$(BUILD)/san/test_worker_%,$(WORKER_UNITS))
WORKER_UNIT_LIBS  := -lcmocka -lyajl -lpq -lcurl

.PHONY: worker worker-unit

worker: $(BUILD)/osago-worker $(BUILD)/san/osago-worker
worker-unit: $(WORKER_UNIT_BINS)

$(BUILD)/osago-worker: $(WORKER_SRCS) $(WORKER_HDRS) worker/build.mk
	@mkdir -p $(BUILD)
	$(CC) $(TOOL_FLAGS) $(CFLAGS) -pthread $(WORKER_CPPFLAGS) -o $@ $(WORKER_SRCS) $(WORKER_LIBS)

$(BUILD)/san/osago-worker: $(WORKER_SRCS) $(WORKER_HDRS) worker/build.mk
	@mkdir -p $(BUILD)/san
	$(CC) $(TOOL_FLAGS) $(CFLAGS) $(SAN_FLAGS) -pthread $(WORKER_CPPFLAGS) -o $@ \
	    $(WORKER_SRCS) $(WORKER_LIBS)

$(WORKER_UNIT_BINS): $(BUILD)/san/test_worker_%: t/unit/test_worker_%.c worker/%.c $(WORKER_HDRS) \
                     worker/build.mk
	@mkdir -p $(BUILD)/san
	$(CC) $(TOOL_FLAGS) $(CFLAGS) $(SAN_FLAGS) $(WORKER_CPPFLAGS) -Iworker -o $@ \
	    t/unit/test_worker_$*.c worker/$*.c $(WORKER_UNIT_LIBS)

all: $(BUILD)/osago-worker
TEST_BINS += $(WORKER_UNIT_BINS) $(BUILD)/san/osago-worker

.DEFAULT_GOAL := $(WORKER_SAVED_GOAL)
