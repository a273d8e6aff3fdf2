# Wrapper for the README's commands. The real build is CMake (+ ctest).
#   make demo   install what is missing, build, run the demo on the default backend
#   make test   install what is missing, build, run the whole test suite
#                (normal build + ASan/UBSan build); last line: "N passed, N failed"

BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=

.PHONY: all deps build build-asan demo test test-fast test-asan install clean fuzz bench

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DZMLX_SANITIZE=ON \
	  -DZMLX_BUILD_BENCH=OFF $(CMAKE_ARGS) >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/example_softmax_demo

# The full suite: every test program in the normal build, then again under
# AddressSanitizer + UndefinedBehaviorSanitizer.
test: build build-asan
	@bash scripts/run-tests.sh $(BUILD) $(ASAN_BUILD)

test-fast: build
	@bash scripts/run-tests.sh $(BUILD)

test-asan: build-asan
	@bash scripts/run-tests.sh $(ASAN_BUILD)

install: build
	cmake --install $(BUILD)

bench: build
	./$(BUILD)/bench/bench_launch

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
