# insurer-sim: simulated insurer APIs (tools/insurer-sim). Included by the top Makefile; uses
# its BUILD, CC, CFLAGS, TOOL_FLAGS and SAN_FLAGS.
INSURER_SIM_SRCS := $(wildcard tools/insurer-sim/*.c)
INSURER_SIM_HDRS := $(wildcard tools/insurer-sim/*.h)
INSURER_SIM_LIBS := -lmicrohttpd -lyajl -lm -pthread

$(BUILD)/insurer-sim: $(INSURER_SIM_SRCS) $(INSURER_SIM_HDRS) tools/insurer-sim/build.mk
	@mkdir -p $(BUILD)
	$(CC) $(TOOL_FLAGS) $(CFLAGS) -pthread -o $@ $(INSURER_SIM_SRCS) $(INSURER_SIM_LIBS)

$(BUILD)/san/insurer-sim: $(INSURER_SIM_SRCS) $(INSURER_SIM_HDRS) tools/insurer-sim/build.mk
	@mkdir -p $(BUILD)/san
	$(CC) $(TOOL_FLAGS) $(CFLAGS) $(SAN_FLAGS) -pthread -o $@ $(INSURER_SIM_SRCS) $(INSURER_SIM_LIBS)
