# Wrapper for the README's commands. The real build is CMake (+ ctest).
#   make demo   install what is missing, build, run the demo on the default backend
#   make test   install what is missing, build, run the whole test suite
#                (normal build + ASan/UBSan build + the threaded tests under
#                ThreadSanitizer + `make fuzz`);
#                last line: "N passed, N failed, N skipped"
#   make check-fast   the normal build's tests only: the quick loop while developing
#   make fuzz   build the libFuzzer target with clang and run it for FUZZ_SECONDS

BUILD      ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=
FUZZ_BUILD ?= build-fuzz
FUZZ_CC    ?= clang
# Seconds of fuzzing in `make fuzz` (0: no limit) and in `make test` (0: skip).
FUZZ_SECONDS ?= 60

.PHONY: all deps build build-asan build-tsan demo test test-fast check-fast test-asan test-tsan \
	install clean fuzz bench

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DZMLX_SANITIZE=ON \
	  -DZMLX_BUILD_BENCH=OFF -DZMLX_TEST_KERNEL_CACHE=$(CURDIR)/$(BUILD)/tests/kernel_cache \
	  $(CMAKE_ARGS) >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)

# ThreadSanitizer (clang): the library and the programs whose threads share
# zmlx objects (tests/CMakeLists.txt's ZMLX_TSAN_TESTS); a race report fails
# the program (TSan's exit code 66).
build-tsan: deps
	cmake -S . -B $(TSAN_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DZMLX_TSAN=ON -DZMLX_BUILD_BENCH=OFF -DZMLX_BUILD_TOOLS=OFF \
	  -DZMLX_TEST_KERNEL_CACHE=$(CURDIR)/$(BUILD)/tests/kernel_cache $(CMAKE_ARGS) >/dev/null
	cmake --build $(TSAN_BUILD) -j $(JOBS)

# `zmlx demo`: trains a small MoE language model on the licence texts under
# /usr/share/common-licenses and samples from it (DEMO_ARGS: more flags).
DEMO_ARGS ?=
demo: build
	./$(BUILD)/zmlx demo $(DEMO_ARGS)

# The full suite: every test program in the normal build, then again under
# AddressSanitizer + UndefinedBehaviorSanitizer, then `make fuzz` for
# FUZZ_SECONDS (counted as one test).
test: build build-asan build-tsan
	@bash scripts/run-tests.sh --fuzz $(FUZZ_SECONDS) $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD)

# The development loop: the normal build's tests only (a few minutes).
test-fast check-fast: build
	@bash scripts/run-tests.sh $(BUILD)

test-asan: build-asan
	@bash scripts/run-tests.sh $(ASAN_BUILD)

test-tsan: build-tsan
	@bash scripts/run-tests.sh $(TSAN_BUILD)

install: build
	cmake --install $(BUILD)

# The libFuzzer targets (+ ASan, UBSan), built with clang in $(FUZZ_BUILD):
# fuzz_expr (the expression parser/emitter) for FUZZ_SECONDS, fuzz_dlpack
# (DLPack import's checks), fuzz_cache_entry (the disk cache's entry
# reader), fuzz_safetensors (the checkpoint reader) and fuzz_kernel_desc
# (kernel descriptors rendered for every dialect) for half of it each. Each runs on a copy of its seed
# corpus so that new inputs never land in the repository (they go to
# $(FUZZ_BUILD)/corpus/<target>, crash reproducers to
# $(FUZZ_BUILD)/artifacts). Fails on a crash, a leak, a sanitizer report or
# an input slower than 30 s.
FUZZ_TARGETS = fuzz_expr fuzz_dlpack fuzz_cache_entry fuzz_safetensors fuzz_kernel_desc
fuzz: deps
	cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=$(FUZZ_CC) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DZMLX_FUZZ=ON -DZMLX_BUILD_BENCH=OFF $(CMAKE_ARGS) >/dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(FUZZ_TARGETS)
	rm -rf $(FUZZ_BUILD)/corpus $(FUZZ_BUILD)/artifacts
	mkdir -p $(FUZZ_BUILD)/artifacts $(FUZZ_BUILD)/corpus
	set -e; for t in $(FUZZ_TARGETS); do \
	  cp -R tests/fuzz/corpus/$$t $(FUZZ_BUILD)/corpus/$$t; \
	  secs=$(FUZZ_SECONDS); [ $$t = fuzz_expr ] || secs=$$(( $(FUZZ_SECONDS) / 2 )); \
	  dict=; [ -f tests/fuzz/corpus/$$t.dict ] && dict=-dict=tests/fuzz/corpus/$$t.dict; \
	  echo "== $$t for $$secs s"; \
	  $(FUZZ_BUILD)/tests/$$t -max_total_time=$$secs -timeout=30 $$dict \
	    -artifact_prefix=$(FUZZ_BUILD)/artifacts/ -print_final_stats=1 $(FUZZ_BUILD)/corpus/$$t; \
	done

bench: build
	./$(BUILD)/bench/bench_launch

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(FUZZ_BUILD)
