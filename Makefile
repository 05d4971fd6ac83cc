# FLASH: CPU reference everywhere, CUDA where nvcc exists.
#   make          build the programs
#   make test     build and run every test (CPU tests; CUDA tests run where a GPU is present)
#   make clean
CXX      ?= g++
CXXFLAGS ?= -O3 -march=native
CXXFLAGS += -std=c++17 -Wall -Wextra -Wno-unused-parameter -fopenmp -I. -MMD -MP
LDLIBS   += -fopenmp

# ---- what this machine has ------------------------------------------------------------------------
HAVE_OPENBLAS := $(shell test -f /usr/include/x86_64-linux-gnu/cblas.h -o -f /usr/include/cblas.h -o -f /usr/include/openblas/cblas.h && echo yes)
ifeq ($(HAVE_OPENBLAS),yes)
  LDLIBS += -lopenblas
else
  $(error OpenBLAS not found: run 'sudo apt-get install libopenblas-dev nlohmann-json3-dev doctest-dev' (or test/run.sh, which installs it))
endif
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
$(info [flash] OpenBLAS: $(HAVE_OPENBLAS)  OpenMP: yes (-fopenmp)  nvcc: $(if $(NVCC),$(NVCC),not found, CUDA parts skipped))

PROGRAMS :=
TEST_BINS :=
BENCH_BINS :=
.DEFAULT_GOAL := all

# ---- tokenizer and data (defines TOKENIZER_OBJS, DATA_OBJS) ---------------------------------------
include tokenizer/rules.mk
# ---- CUDA, where nvcc exists (defines CUDA_OBJS, CUDA_LDLIBS, CUDA_CXXFLAGS; empty without nvcc) --------
include mk/cuda.mk
# ---- the model ------------------------------------------------------------------------------------
MODEL_OBJS := build/flash.o
PROGRAMS   += train
TEST_BINS  += build/test_ops build/test_model build/test_train

# The trainer calls the GPU model when CUDA was built (--device cuda|auto).
TRAINER_OBJS = build/trainer.o build/rundir.o build/decode.o $(MODEL_OBJS) $(TOKENIZER_OBJS) $(DATA_OBJS) $(CUDA_OBJS)
build/trainer.o: CXXFLAGS += $(CUDA_CXXFLAGS)
train: build/train.o $(TRAINER_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LDLIBS)
build/test_ops: build/test/test_ops.o $(MODEL_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)
build/test_model: build/test/test_model.o $(MODEL_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)
# test_train also runs ./train as a process (locking, signals, kill and resume).
build/test_train: build/test/test_train.o $(TRAINER_OBJS) | train
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LDLIBS)
# Every loader against thousands of mutated files (test/test_fuzz.cpp).
TEST_BINS  += build/test_fuzz
build/test_fuzz: build/test/test_fuzz.o $(TRAINER_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LDLIBS)
BENCH_BINS += build/bench_cpu
build/bench_cpu: build/bench/bench_cpu.o $(MODEL_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

# ---- cached decoding and ./sample ------------------------------------------------------------------
include mk/decode.mk

all: $(PROGRAMS) $(TEST_BINS) $(BENCH_BINS)

build/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

# Every test binary runs; the summary line counts passed and failed binaries' test cases.
test: $(TEST_BINS)
	@bash test/run_all.sh $(TEST_BINS)

# Every CPU test under AddressSanitizer and UndefinedBehaviorSanitizer, built in build-san/ (scripts/sanitize.sh).
sanitize:
	@bash scripts/sanitize.sh

print-test-bins:
	@echo $(TEST_BINS)

clean:
	rm -rf build build-san $(PROGRAMS) $(TEST_BINS) $(BENCH_BINS)

.PHONY: all test sanitize print-test-bins clean
-include $(shell find build -name '*.d' 2>/dev/null)
