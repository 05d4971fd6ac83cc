# mk/cuda.mk: the CUDA parts (flash.cu, test/test_cuda.cu, bench/bench_cuda.cu). Included by the Makefile after the
# model section; sees NVCC (a path, or empty when there is no nvcc), CXX, CXXFLAGS, LDLIBS and MODEL_OBJS.
# Building needs nvcc only, never a GPU. When NVCC is empty this adds nothing and CUDA_OBJS etc. stay empty.
#
# For the programs that link the GPU model (e.g. ./train):
#   CUDA_OBJS      the object to link (build/flash_cuda.o, flash.cu's host API of flash_cuda.h)
#   CUDA_LDLIBS    the libraries it needs (cudart, cublas, with an rpath to the toolkit's lib64)
#   CUDA_CXXFLAGS  -DFLASH_HAVE_CUDA=1, for sources that call the GPU model only when it was built
# GPU architecture: CUDA_ARCH=sm_XX overrides; otherwise the first GPU's compute capability from nvidia-smi
# (sm_90 on an H200), and sm_90 where there is no nvidia-smi or no GPU.

CUDA_OBJS :=
CUDA_LDLIBS :=
CUDA_CXXFLAGS :=

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

# The CPU model, for the tests' reference ops (build/flash.o when this file is read before the model section).
CUDA_MODEL_OBJS := $(if $(MODEL_OBJS),$(MODEL_OBJS),build/flash.o)

TEST_BINS  += build/test_cuda
BENCH_BINS += build/bench_cuda

build/flash_cuda.o: flash.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

build/test/test_cuda.o: test/test_cuda.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

build/bench/bench_cuda.o: bench/bench_cuda.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# Linked by the host compiler: the objects hold their device code (no relocatable device code), and the CPU model
# (OpenMP, OpenBLAS) links as usual.
build/test_cuda: build/test/test_cuda.o $(CUDA_OBJS) $(CUDA_MODEL_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LDLIBS)

build/bench_cuda: build/bench/bench_cuda.o $(CUDA_OBJS) $(CUDA_MODEL_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LDLIBS)

endif
