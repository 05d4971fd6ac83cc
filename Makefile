# FLASH: CPU reference everywhere, CUDA where nvcc exists. One Makefile for everything.
#   make          build the programs, tests and benchmarks
#   make test     build and run every test (CPU tests; CUDA tests run where a GPU is present)
#   make clean
CXX      ?= g++
CXXFLAGS ?= -O3 -march=native
CXXFLAGS += -std=c++17 -Wall -Wextra -Wno-unused-parameter -fopenmp -I. -MMD -MP
# FP exceptions are never inspected here; without this GCC keeps a float compare-and-select (a clamp, a relu) as a
# branch on AVX2 and does not vectorise the loop around it (AVX-512's masks do not need it). Values do not change.
CXXFLAGS += -fno-trapping-math
# errno is never read after a math call either; without this std::sqrt must be able to set it, which keeps every loop
# with a square root scalar (AdamW's). Values do not change: sqrt is correctly rounded in vector lanes too.
CXXFLAGS += -fno-math-errno
LDLIBS   += -fopenmp
.DEFAULT_GOAL := all

# ---- what this machine has ------------------------------------------------------------------------
HAVE_OPENBLAS := $(shell test -f /usr/include/x86_64-linux-gnu/cblas.h -o -f /usr/include/cblas.h -o -f /usr/include/openblas/cblas.h && echo yes)
ifeq ($(HAVE_OPENBLAS),yes)
  LDLIBS += -lopenblas
else
  $(error OpenBLAS not found: run 'sudo apt-get install libopenblas-dev nlohmann-json3-dev doctest-dev' (or test/run.sh, which installs it))
endif
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
$(info [flash] OpenBLAS: $(HAVE_OPENBLAS)  OpenMP: yes (-fopenmp)  nvcc: $(if $(NVCC),$(NVCC),not found, CUDA parts skipped))

# ---- CUDA, where nvcc exists (building needs nvcc only, never a GPU) --------------------------------
#   CUDA_OBJS      the GPU model (flash.cu), linked into everything that can make a model (model.cpp's factory)
#   CUDA_LDLIBS    cudart and cublas, with an rpath to the toolkit's lib64
#   CUDA_CXXFLAGS  -DFLASH_HAVE_CUDA=1 for model.cpp, the one source that chooses the device
# GPU architecture: CUDA_ARCH=sm_XX overrides; otherwise the first GPU's compute capability from nvidia-smi
# (sm_90 on an H200), and sm_90 where there is no nvidia-smi or no GPU.
CUDA_OBJS :=
CUDA_LDLIBS :=
CUDA_CXXFLAGS :=
CUDA_TESTS :=
CUDA_BENCHES :=
ifneq ($(strip $(NVCC)),)
  ifeq ($(origin CUDA_ARCH),undefined)
    # nvidia-smi prints its errors on stdout, so keep only a line that looks like "9.0".
    CUDA_GPU_CC := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | grep -m1 -E '^ *[0-9]+\.[0-9]+ *$$' | tr -d ' .')
    CUDA_ARCH := $(if $(CUDA_GPU_CC),sm_$(CUDA_GPU_CC),sm_90)
  endif
  CUDA_HOME ?= $(patsubst %/,%,$(dir $(patsubst %/,%,$(dir $(realpath $(NVCC))))))
  CUDA_LIBDIR := $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib))
  $(info [flash] CUDA: nvcc $(NVCC), arch $(CUDA_ARCH), libraries $(if $(CUDA_LIBDIR),$(CUDA_LIBDIR),(system default)))
  # -arch=sm_XX embeds the machine code for that GPU and the PTX of compute_XX (so newer GPUs can JIT it).
  # No --use_fast_math: the tests hold the kernels to the CPU's expf, divisions and square roots.
  NVCCFLAGS ?= -O3
  NVCCFLAGS += -std=c++17 -arch=$(CUDA_ARCH) -I. -MMD -MP -Xcompiler -Wall,-Wextra,-Wno-unused-parameter
  comma := ,
  CUDA_OBJS := build/flash_cuda.o
  CUDA_LDLIBS := $(if $(CUDA_LIBDIR),-L$(CUDA_LIBDIR) -Wl$(comma)-rpath$(comma)$(CUDA_LIBDIR)) -lcublas -lcudart
  CUDA_CXXFLAGS := -DFLASH_HAVE_CUDA=1
  CUDA_TESTS := build/test_cuda
  CUDA_BENCHES := build/bench_cuda
endif

# ---- MPI, where mpicxx exists (data-parallel ./train under mpirun; dist.h) -------------------------------------
#   dist.cpp alone is compiled by mpicxx with -DFLASH_HAVE_MPI; the trainer's programs link with mpicxx's flags.
#   Without mpicxx, dist.cpp is compiled by $(CXX) as one rank of one. NCCL (dist_nccl.cu) where nvcc and nccl.h
#   exist as well: the GPU all-reduce.
MPICXX ?= $(shell command -v mpicxx 2>/dev/null)
DIST_OBJS := build/dist.o
DIST_CXX := $(CXX)
DIST_CXXFLAGS :=
MPI_LDLIBS :=
ifneq ($(strip $(MPICXX)),)
  DIST_CXX := $(MPICXX)
  DIST_CXXFLAGS := -DFLASH_HAVE_MPI=1 -DOMPI_SKIP_MPICXX=1 -DMPICH_SKIP_MPICXX=1  # the C API only
  # Open MPI says --showme:link, MPICH -link_info (its first word is the compiler)
  MPI_LDLIBS := $(shell $(MPICXX) --showme:link 2>/dev/null || $(MPICXX) -link_info 2>/dev/null | cut -d' ' -f2-)
  ifneq ($(strip $(NVCC)),)
    ifneq ($(wildcard $(CUDA_HOME)/include/nccl.h),)
      DIST_OBJS += build/dist_nccl.o
      DIST_CXXFLAGS += -DFLASH_HAVE_NCCL=1
      MPI_LDLIBS += -lnccl
    endif
  endif
endif
$(info [flash] MPI: $(if $(MPICXX),$(MPICXX)$(if $(filter build/dist_nccl.o,$(DIST_OBJS)), with NCCL),not found: one process))

# ---- objects ----------------------------------------------------------------------------------------
TOKENIZER_OBJS := build/tokenizer/bpe.o
DATA_OBJS      := build/data/tokenfile.o build/data/dataloader.o build/data/mlm.o
# The model: shared ops, FLASH, the interface and its factory, the file formats (and the GPU model where built).
MODEL_OBJS     := build/ops.o build/flash.o build/model.o build/formats/config.o build/formats/safetensors.o \
                  build/formats/checkpoint.o build/debug_state.o build/options.o build/combiner.o build/transformer.o $(CUDA_OBJS)
# The debug state masks its batch for --objective mlm (data/mlm.h). ($^ lists an object named twice once.)
MODEL_OBJS     += build/data/mlm.o build/data/dataloader.o
DECODE_OBJS    := build/decode.o build/decode_baselines.o build/decoder.o
TRAINER_OBJS   := build/trainer.o build/rundir.o build/eval.o $(DIST_OBJS) $(DECODE_OBJS) $(MODEL_OBJS) $(TOKENIZER_OBJS) \
                  $(DATA_OBJS)
build/model.o: CXXFLAGS += $(CUDA_CXXFLAGS)

PROGRAMS   := train sample tokenizer/bpe
TEST_BINS  := build/test_tokenizer build/test_data build/test_ops build/test_model build/test_train \
              build/test_options build/test_dist build/test_decode build/test_eval build/test_combiner build/test_transformer \
              build/test_decode_baselines build/test_mlm build/test_fuzz $(CUDA_TESTS)
BENCH_BINS := build/bench_tokenizer build/bench_cpu build/bench_decode build/bench_combiner $(CUDA_BENCHES)
# The comparison's table and plot data (experiments/compare.sh); shell tests, run by make test after the binaries.
EXPERIMENT_BINS := build/compare_report
SHELL_TESTS := test/test_compare.sh

all: $(PROGRAMS) $(TEST_BINS) $(BENCH_BINS) $(EXPERIMENT_BINS)

# ---- programs, tests, benchmarks: each a main object and what it uses ---------------------------------
LINK = $(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LDLIBS)
train: build/train.o $(TRAINER_OBJS)
	$(LINK) $(MPI_LDLIBS)
sample: build/sample.o $(DECODE_OBJS) $(MODEL_OBJS) $(TOKENIZER_OBJS)
	$(LINK)
tokenizer/bpe: build/tokenizer/main.o $(TOKENIZER_OBJS) $(DATA_OBJS)
	$(LINK)
build/test_tokenizer: build/test/test_tokenizer.o $(TOKENIZER_OBJS)
	$(LINK)
build/test_data: build/test/test_data.o $(DATA_OBJS) $(TOKENIZER_OBJS)
	$(LINK)
build/test_ops: build/test/test_ops.o $(MODEL_OBJS)
	$(LINK)
build/test_model: build/test/test_model.o $(MODEL_OBJS)
	$(LINK)
# test_train also runs ./train and ./sample as processes (locking, signals, kill and resume, crafted files).
build/test_train: build/test/test_train.o $(TRAINER_OBJS) | train sample
	$(LINK) $(MPI_LDLIBS)
# Every loader against thousands of mutated files (test/test_fuzz.cpp).
build/test_fuzz: build/test/test_fuzz.o $(TRAINER_OBJS)
	$(LINK) $(MPI_LDLIBS)
build/test_options: build/test/test_options.o $(TRAINER_OBJS)
	$(LINK) $(MPI_LDLIBS)
# test_dist runs ./train under mpirun
build/test_dist: build/test/test_dist.o $(TRAINER_OBJS) | train
	$(LINK) $(MPI_LDLIBS)
build/test_mlm: build/test/test_mlm.o $(TRAINER_OBJS)
	$(LINK) $(MPI_LDLIBS)
build/test_decode: build/test/test_decode.o $(DECODE_OBJS) $(MODEL_OBJS)
	$(LINK)
build/test_decode_baselines: build/test/test_decode_baselines.o $(DECODE_OBJS) $(MODEL_OBJS)
	$(LINK)
build/test_cuda: build/test/test_cuda.o $(MODEL_OBJS)
	$(LINK)
build/bench_tokenizer: build/tokenizer/bench.o $(TOKENIZER_OBJS)
	$(LINK)
build/bench_cpu: build/bench/bench_cpu.o $(MODEL_OBJS)
	$(LINK)
build/bench_decode: build/bench/bench_decode.o $(DECODE_OBJS) $(MODEL_OBJS)
	$(LINK)
build/bench_cuda: build/bench/bench_cuda.o $(MODEL_OBJS)
	$(LINK)
build/test_eval: build/test/test_eval.o build/eval.o $(MODEL_OBJS) $(TOKENIZER_OBJS) $(DATA_OBJS)
	$(LINK)
build/test_transformer: build/test/test_transformer.o $(MODEL_OBJS)
	$(LINK)
build/test_combiner: build/test/test_combiner.o $(MODEL_OBJS)
	$(LINK)
build/bench_combiner: build/bench/bench_combiner.o $(MODEL_OBJS)
	$(LINK)
build/compare_report: build/experiments/compare_report.o   # needs neither BLAS nor CUDA
	$(CXX) $(CXXFLAGS) $^ -o $@

# ---- compiling ----------------------------------------------------------------------------------------
build/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@
# CUDA sources: compiled by nvcc; the objects hold their device code (no relocatable device code), and are linked
# by the host compiler with the rest.
build/dist.o: dist.cpp
	@mkdir -p $(dir $@)
	$(DIST_CXX) $(CXXFLAGS) $(DIST_CXXFLAGS) -c $< -o $@
build/flash_cuda.o: flash.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@
build/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# Every test binary runs, then the shell tests (the comparison's smoke test drives ./train, tokenizer/bpe and
# build/compare_report); the summary line counts passed and failed test cases.
test: $(TEST_BINS) $(PROGRAMS) $(EXPERIMENT_BINS)
	@bash test/run_all.sh $(TEST_BINS) $(SHELL_TESTS)

# Every CPU test under AddressSanitizer and UndefinedBehaviorSanitizer, built in build-san/ (scripts/sanitize.sh).
sanitize:
	@bash scripts/sanitize.sh

print-test-bins:
	@echo $(TEST_BINS)

clean:
	rm -rf build build-san $(PROGRAMS)

.PHONY: all test sanitize print-test-bins clean
-include $(shell find build -name '*.d' 2>/dev/null)
