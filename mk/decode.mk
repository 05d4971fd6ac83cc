# mk/decode.mk: cached decoding (FLASH.md §3), sampling and the ./sample command; included by the top-level
# Makefile after tokenizer/rules.mk (it needs MODEL_OBJS and TOKENIZER_OBJS).
#   ./sample                 generate text from a checkpoint and its tokenizer
#   build/test_decode        cached decoding equals the full forward; sampling
#   build/bench_decode       time per generated token, cached vs recomputing the prefix
# Objects come from the top-level pattern rule build/%.o: %.cpp.

ifeq ($(.DEFAULT_GOAL),)
.DEFAULT_GOAL := all
endif

DECODE_OBJS := build/decode.o

sample: build/sample.o $(DECODE_OBJS) $(MODEL_OBJS) $(TOKENIZER_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

build/test_decode: build/test/test_decode.o $(DECODE_OBJS) $(MODEL_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

build/bench_decode: build/bench/bench_decode.o $(DECODE_OBJS) $(MODEL_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

PROGRAMS   += sample
TEST_BINS  += build/test_decode
BENCH_BINS += build/bench_decode
