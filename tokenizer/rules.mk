# tokenizer/rules.mk: the tokenizer and data pipeline; included by the top-level Makefile.
#   tokenizer/bpe            command line: train / encode / decode / info
#   build/bench_tokenizer    training and encoding speed on a text file
#   build/test_tokenizer     tokenizer tests;  build/test_data: token file + data loader tests
# Objects come from the top-level pattern rule build/%.o: %.cpp.

# The top-level `all` is defined after this file is included; keep it the default goal.
ifeq ($(.DEFAULT_GOAL),)
.DEFAULT_GOAL := all
endif

TOKENIZER_OBJS := build/tokenizer/bpe.o
DATA_OBJS      := build/data/tokenfile.o build/data/dataloader.o

tokenizer/bpe: build/tokenizer/main.o $(TOKENIZER_OBJS) $(DATA_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

build/bench_tokenizer: build/tokenizer/bench.o $(TOKENIZER_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

build/test_tokenizer: build/test/test_tokenizer.o $(TOKENIZER_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

build/test_data: build/test/test_data.o $(DATA_OBJS) $(TOKENIZER_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

PROGRAMS   += tokenizer/bpe
BENCH_BINS += build/bench_tokenizer
TEST_BINS  += build/test_tokenizer build/test_data
