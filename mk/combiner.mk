# mk/combiner.mk: Combiner-Fixed attention (BASELINES.md §3); included by the top-level Makefile.
#   build/test_combiner      the ops against finite differences, softmax attention, the naive T×T form; cached decoding
#   build/bench_combiner     the ops alone against T: time, model FLOPs per token and their rate
COMBINER_OBJS := build/combiner.o

build/test_combiner: build/test/test_combiner.o $(COMBINER_OBJS) $(MODEL_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

TEST_BINS += build/test_combiner

build/bench_combiner: build/bench/bench_combiner.o $(COMBINER_OBJS) $(MODEL_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

BENCH_BINS += build/bench_combiner
