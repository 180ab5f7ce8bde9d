# devbroker: librdkafka's mock cluster as a daemon (tools/devbroker). Included by the top
# Makefile; uses its BUILD, CC, CFLAGS, TOOL_FLAGS and SAN_FLAGS.
DEVBROKER_SRCS := $(wildcard tools/devbroker/*.c)
DEVBROKER_HDRS := $(wildcard tools/devbroker/*.h)
DEVBROKER_LIBS := -lrdkafka

$(BUILD)/devbroker: $(DEVBROKER_SRCS) $(DEVBROKER_HDRS) tools/devbroker/build.mk
	@mkdir -p $(BUILD)
	$(CC) $(TOOL_FLAGS) $(CFLAGS) -o $@ $(DEVBROKER_SRCS) $(DEVBROKER_LIBS)

$(BUILD)/san/devbroker: $(DEVBROKER_SRCS) $(DEVBROKER_HDRS) tools/devbroker/build.mk
	@mkdir -p $(BUILD)/san
	$(CC) $(TOOL_FLAGS) $(CFLAGS) $(SAN_FLAGS) -o $@ $(DEVBROKER_SRCS) $(DEVBROKER_LIBS)

# The cmocka unit test of the frame code (t/unit/test_devbroker_kproto.c, run by
# t/32-devbroker-unit.t) links kproto.c alone: it needs neither librdkafka nor sockets.
$(BUILD)/san/test_devbroker_kproto: t/unit/test_devbroker_kproto.c tools/devbroker/kproto.c \
                                    tools/devbroker/kproto.h tools/devbroker/build.mk
	@mkdir -p $(BUILD)/san
	$(CC) $(TOOL_FLAGS) $(CFLAGS) $(SAN_FLAGS) -Itools/devbroker -o $@ \
	    t/unit/test_devbroker_kproto.c tools/devbroker/kproto.c -lcmocka

TEST_BINS += $(BUILD)/san/test_devbroker_kproto
