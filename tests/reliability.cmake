# Issue 7's checks (docs/reliability.md), included by tests/CMakeLists.txt after the unit tests:
# the library's unit tests once more under AddressSanitizer + UndefinedBehaviorSanitizer, the
# checkpoint fuzzer (clang/libFuzzer, its own project under tests/fuzz), and the SIGKILL test.

# ---- unit tests under ASan + UBSan ---------------------------------------------------------------
set(_zotorch_sanitize_default OFF)
if(CMAKE_SYSTEM_NAME STREQUAL "Linux" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(_zotorch_sanitize_default ON)
endif()
option(ZOTORCH_SANITIZE_TESTS
       "Also build the library's unit tests with -fsanitize=address,undefined (zotorch_tests_asan, ctest entry asan:zotorch_tests)"
       ${_zotorch_sanitize_default})
if(ZOTORCH_SANITIZE_TESTS)
  # Our translation units are instrumented, LibTorch is not. Left out: the tests of the examples'
  # code (BERT loader, the two tokenizers, Llama model), the README copy, the multi-process tests and
  # the convergence runs (5 minutes under ASan), which exercise no zotorch code the others do not.
  set(_asan_sources ${ZOTORCH_TEST_SOURCES})
  list(FILTER _asan_sources EXCLUDE REGEX
       "/test_(bert_loader|wordpiece|bpe|llama|readme_example|distributed|convergence)\\.cpp$")
  zotorch_add_unit_tests(zotorch_tests_asan ${_asan_sources} sanitizer_options.cpp)
  # -O1 is what the sanitizers' authors recommend, and compiles faster than the -O3 of Release. The
  # precompiled header is the target's own, built with these flags.
  set(_sanitize_flags -fsanitize=address,undefined -fno-omit-frame-pointer)
  target_compile_options(zotorch_tests_asan PRIVATE ${_sanitize_flags} -O1 -g1)
  target_link_options(zotorch_tests_asan PRIVATE ${_sanitize_flags})
  # The CPU kernels compiled once, instrumented like the tests (zotorch::cpu_kernels is not).
  zotorch_create_cpu_kernels_target(zotorch_cpu_kernels_asan COMPILE_OPTIONS ${_sanitize_flags} -O1 -g1)
  target_link_libraries(zotorch_tests_asan PRIVATE zotorch_cpu_kernels_asan)
  set_source_files_properties(sanitizer_options.cpp PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
  # One ctest entry that runs every test case in one process (15 s): under ASan each process start
  # costs about a second, which 94 separate entries would pay 94 times. A report fails the entry
  # and its output names the test case.
  add_test(NAME asan:zotorch_tests COMMAND zotorch_tests_asan ${ZOTORCH_CATCH_ARGS})
  set_tests_properties(asan:zotorch_tests PROPERTIES LABELS sanitize TIMEOUT 900)
endif()

# ---- kill test: SIGKILL a training job at random moments and inside checkpoint writes ----------
add_executable(kill_resume_worker kill_resume_worker.cpp)
target_link_libraries(kill_resume_worker PRIVATE zotorch::zotorch zotorch::cpu_kernels)
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  add_test(NAME kill_resume
           COMMAND Python3::Interpreter "${CMAKE_CURRENT_SOURCE_DIR}/kill_resume_test.py"
                   $<TARGET_FILE:kill_resume_worker> --kills 16 --steps 2000 --workdir "${CMAKE_CURRENT_BINARY_DIR}/kill_resume")
  set_tests_properties(kill_resume PROPERTIES TIMEOUT 300 LABELS reliability)
else()
  message(WARNING "zotorch: no Python 3 interpreter; the kill test (tests/kill_resume_test.py) is not run")
endif()

# ---- checkpoint fuzzer: clang++ -fsanitize=fuzzer,address, as a project of its own --------------
set(ZOTORCH_FUZZ_SECONDS 30 CACHE STRING "Seconds ctest's fuzz_checkpoint test fuzzes for (0: only replay seeds and findings)")
find_program(ZOTORCH_CLANGXX NAMES clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14
             DOC "clang++ with libFuzzer, for tests/fuzz")
set(_fuzz_why "")
if(NOT ZOTORCH_CLANGXX)
  set(_fuzz_why "no clang++ found (Debian: apt-get install clang)")
elseif(NOT DEFINED TORCH_INSTALL_PREFIX)
  set(_fuzz_why "TORCH_INSTALL_PREFIX is unknown")
else()
  # libFuzzer ships apart from clang in some distributions: try it once.
  set(_probe "${CMAKE_CURRENT_BINARY_DIR}/fuzz_probe")
  file(WRITE "${_probe}.cpp" "extern \"C\" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n")
  execute_process(COMMAND "${ZOTORCH_CLANGXX}" -fsanitize=fuzzer,address "${_probe}.cpp" -o "${_probe}"
                  RESULT_VARIABLE _probe_status OUTPUT_QUIET ERROR_QUIET)
  if(NOT _probe_status EQUAL 0)
    set(_fuzz_why "${ZOTORCH_CLANGXX} cannot link -fsanitize=fuzzer (Debian: apt-get install clang, or libclang-rt-<N>-dev)")
  endif()
endif()
if(_fuzz_why)
  message(WARNING "zotorch: the checkpoint fuzzer is NOT built: ${_fuzz_why}")
else()
  include(ExternalProject)
  set(_fuzz_dir "${CMAKE_CURRENT_BINARY_DIR}/fuzz")
  ExternalProject_Add(zotorch_fuzz
    SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}/fuzz"
    BINARY_DIR "${_fuzz_dir}/build"
    CMAKE_ARGS -DCMAKE_CXX_COMPILER=${ZOTORCH_CLANGXX} -DCMAKE_BUILD_TYPE=Release
               -DTORCH_INSTALL_PREFIX=${TORCH_INSTALL_PREFIX} -DZOTORCH_ROOT=${PROJECT_SOURCE_DIR}
               -DCMAKE_CXX_STANDARD=${ZOTORCH_TORCH_CXX_STANDARD}
    # Its ninja tracks the headers; running it when nothing changed costs a fraction of a second.
    BUILD_ALWAYS ON
    INSTALL_COMMAND ""
    BUILD_BYPRODUCTS "${_fuzz_dir}/build/fuzz_checkpoint")
  add_test(NAME fuzz_checkpoint
           COMMAND "${CMAKE_CURRENT_SOURCE_DIR}/fuzz/run_fuzz.sh" "${_fuzz_dir}/build/fuzz_checkpoint" "${_fuzz_dir}/run"
                   ${ZOTORCH_FUZZ_SECONDS} "${CMAKE_CURRENT_SOURCE_DIR}/fuzz/findings")
  math(EXPR _fuzz_timeout "${ZOTORCH_FUZZ_SECONDS} + 240")
  set_tests_properties(fuzz_checkpoint PROPERTIES TIMEOUT ${_fuzz_timeout} LABELS reliability)
endif()
