# awq_quest - build the examples, tools and tests.
#   make                 examples and tools, against OpenBLAS
#   make AQ_NO_BLAS=1    the same with the plain C GEMM (binaries under build/noblas/)
#   make test            build and run the test suite (last line: "N passed, N failed")
#   make test-asan       the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make demo            build and run the demo (MODEL=path/to/model.gguf to choose another model)
#   make bench           speed report on TinyLlama-1.1B-shape random models, int4 / F16 / F32 (written on first use)
#   make bench-quest     long-context decode, dense vs Quest budgets (table, build/quest.csv, and a PNG with gnuplot)
#   make cuda            the GPU build under build/cuda/: kernels/aq_cuda.cu for sm_80/86/87/89/90 plus
#                        compute_90 PTX (CUDA_ARCH="90" narrows it), the examples, tools, aq-gpu-check and
#                        the tests linked against it (they run on the CPU where there is no GPU)
#   make test-cuda-emu   kernels/aq_cuda.cu compiled by the C++ compiler against tests/cuda_emu (CUDA
#                        emulated on the CPU, no GPU needed), and aq-gpu-check's kernel and model checks
#                        run on it (tests/cuda_emu/run; build/cuda-emu/)
#   make test-cuda-emu-asan  the same under AddressSanitizer (build/cuda-emu-asan/; slower, not in CI)

CC          ?= cc
STB_INCLUDE ?= /usr/include/stb
CFLAGS      ?= -O2 -g
SHARED      ?= ../shared
MODEL       ?= $(SHARED)/models/stories260K.gguf
BENCH_DIR   ?= build/models

CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
CUDA_ARCH ?= 80 86 87 89 90
# --threads 0: the architectures compiled in parallel, one per core
NVCCFLAGS ?= -O3 --threads 0

WARN   = -std=c99 -Wall -Wextra -Wshadow -Wstrict-prototypes
ifeq ($(CUDA),1)
OUT       ?= build/cuda
CUDA_OBJ   = $(OUT)/aq_cuda.o
CUDA_DEFS  = -DAQ_CUDA
CUDA_LIBS  = $(CUDA_OBJ) -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
GPU_TOOLS  = $(OUT)/tools/aq-gpu-check
# machine code for every listed architecture, and PTX of the newest so later GPUs can JIT it
GENCODE    = $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(a),code=sm_$(a)) \
             -gencode arch=compute_$(lastword $(CUDA_ARCH)),code=compute_$(lastword $(CUDA_ARCH))
endif
ifeq ($(CUDA_EMU),1)
OUT       ?= build/cuda-emu
CUDA_OBJ   = $(OUT)/aq_cuda.o
CUDA_DEFS  = -DAQ_CUDA
CUDA_LIBS  = $(CUDA_OBJ) -lstdc++
GPU_TOOLS  = $(OUT)/tools/aq-gpu-check
EMU_CXXFLAGS = -std=c++17 -O2 -g -fno-strict-aliasing -Wall -Wno-unused-function -Wno-unknown-pragmas -Itests/cuda_emu $(EMU_SANITIZE)
endif
ifeq ($(AQ_NO_BLAS),1)
OUT      ?= build/noblas
DEFS      = -DAQ_NO_BLAS
BLAS_LIBS =
else
OUT      ?= .
DEFS      =
BLAS_LIBS = -lopenblas
endif
P       = $(patsubst ./%,%,$(OUT)/)
LDLIBS  = $(CUDA_LIBS) $(BLAS_LIBS) -lm -pthread
ALL_CFLAGS = $(WARN) $(CFLAGS) $(DEFS) $(CUDA_DEFS) -I. -I$(STB_INCLUDE) -pthread -DAQ_BIN_DIR='"$(OUT)"' -DAQ_SHARED_DIR='"$(SHARED)"'

EXAMPLES = $(P)examples/generate $(P)examples/minimal
TOOLS    = $(P)tools/aq-inspect $(P)tools/aq-synth $(P)tools/aq-bench $(P)tools/aq-perplexity $(P)tools/aq-quantize
TESTS    = $(P)tests/run_tests
TEST_SRC = $(wildcard tests/*.c tests/*.h) tools/tool_util.h

.PHONY: all test test-asan test-cuda-emu test-cuda-emu-asan demo bench bench-models bench-quest cuda clean FORCE

all: $(EXAMPLES) $(TOOLS) $(GPU_TOOLS)

# Rebuild everything when the compiler or its flags change.
BUILD_FLAGS = $(CC) $(ALL_CFLAGS) $(LDLIBS) $(if $(GENCODE),$(NVCC) $(NVCCFLAGS) $(GENCODE)) $(EMU_CXXFLAGS)
$(P).build-flags: FORCE
	@mkdir -p $(OUT)
	@echo '$(BUILD_FLAGS)' | cmp -s - $@ || echo '$(BUILD_FLAGS)' > $@

ifeq ($(CUDA),1)
$(CUDA_OBJ): kernels/aq_cuda.cu kernels/aq_cuda.h $(P).build-flags
	$(NVCC) $(NVCCFLAGS) $(GENCODE) -c $< -o $@
endif
ifeq ($(CUDA_EMU),1)
$(CUDA_OBJ): kernels/aq_cuda.cu kernels/aq_cuda.h $(wildcard tests/cuda_emu/*.h) $(P).build-flags
	$(CXX) $(EMU_CXXFLAGS) -x c++ -c $< -o $@
$(OUT)/selftest: tests/cuda_emu/selftest.cpp $(wildcard tests/cuda_emu/*.h) $(P).build-flags
	$(CXX) $(EMU_CXXFLAGS) $< -o $@
$(OUT)/traffic: tests/cuda_emu/traffic.c awq_quest.h $(P).build-flags $(CUDA_OBJ)
	$(CC) $(ALL_CFLAGS) $< -o $@ $(LDLIBS)
endif

$(P)examples/%: examples/%.c awq_quest.h $(P).build-flags $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $< -o $@ $(LDLIBS)
$(P)tools/%: tools/%.c tools/tool_util.h awq_quest.h $(P).build-flags $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $< -o $@ $(LDLIBS)
$(TESTS): $(TEST_SRC) awq_quest.h $(P).build-flags $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) tests/run_tests.c -o $@ $(LDLIBS)

cuda:
	$(MAKE) CUDA=1 all build/cuda/tests/run_tests

test-cuda-emu:
	$(MAKE) CUDA_EMU=1 build/cuda-emu/selftest build/cuda-emu/traffic build/cuda-emu/tools/aq-gpu-check \
		build/cuda-emu/tools/aq-quantize build/cuda-emu/tools/aq-synth
	tests/cuda_emu/run

# the same under AddressSanitizer, device memory allocated to the byte: a kernel's read past a
# buffer's end stops the run (on a GPU it reads garbage, or faults and poisons the context)
EMU_ASAN = -fsanitize=address -fno-omit-frame-pointer
test-cuda-emu-asan:
	$(MAKE) CUDA_EMU=1 OUT=build/cuda-emu-asan CFLAGS="-O2 -g $(EMU_ASAN)" EMU_SANITIZE="$(EMU_ASAN)" \
		build/cuda-emu-asan/selftest build/cuda-emu-asan/traffic build/cuda-emu-asan/tools/aq-gpu-check \
		build/cuda-emu-asan/tools/aq-quantize build/cuda-emu-asan/tools/aq-synth
	B=build/cuda-emu-asan tests/cuda_emu/run

test: $(EXAMPLES) $(TOOLS) $(TESTS)
	$(TESTS)

test-asan:
	$(MAKE) OUT=build/asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" test

demo: $(P)examples/generate
	$(P)examples/generate -m $(MODEL) -p "Once upon a time" -n 200 --temp 0.8 --seed 42

bench-models: $(P)tools/aq-bench $(P)tools/aq-synth $(P)tools/aq-quantize
	@mkdir -p $(BENCH_DIR)
	@test -f $(BENCH_DIR)/tinyllama-f16.gguf || $(P)tools/aq-synth --preset tinyllama --type f16 -o $(BENCH_DIR)/tinyllama-f16.gguf
	@test -f $(BENCH_DIR)/tinyllama-f32.gguf || $(P)tools/aq-synth --preset tinyllama --type f32 -o $(BENCH_DIR)/tinyllama-f32.gguf
	@test -f $(BENCH_DIR)/tinyllama-rtn-g128.gguf || $(P)tools/aq-quantize --method rtn --group 128 $(BENCH_DIR)/tinyllama-f16.gguf $(BENCH_DIR)/tinyllama-rtn-g128.gguf

bench: bench-models
	$(P)tools/aq-bench -m $(BENCH_DIR)/tinyllama-rtn-g128.gguf -m $(BENCH_DIR)/tinyllama-f16.gguf -m $(BENCH_DIR)/tinyllama-f32.gguf -t 2 -p 256 -n 32

bench-quest: bench-models
	$(P)tools/aq-bench -m $(BENCH_DIR)/tinyllama-rtn-g128.gguf --quest -t 2 -n 8 --csv build/quest.csv
	@if command -v gnuplot >/dev/null; then gnuplot -e "csv='build/quest.csv'; png='build/quest-speedup.png'" tools/quest-plot.gp && echo "wrote build/quest-speedup.png"; \
	 else echo "gnuplot is not installed: no plot (the numbers are in build/quest.csv)"; fi

clean:
	rm -rf build .build-flags $(EXAMPLES) $(TOOLS) $(TESTS)
