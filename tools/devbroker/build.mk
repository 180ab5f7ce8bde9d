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
