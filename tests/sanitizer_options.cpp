// Default sanitizer options of zotorch_tests_asan (docs/reliability.md "Sanitizers"), compiled into
// the executable so that ctest's test discovery and a developer's plain run behave like CI.
// ASAN_OPTIONS, LSAN_OPTIONS and UBSAN_OPTIONS in the environment still override them.

// protect_shadow_gap=0: the CUDA driver maps memory where ASan would otherwise reserve its shadow
// gap, and cuInit fails under ASan without it; on a GPU machine the CUDA tests then run sanitized.
extern "C" const char* __asan_default_options() { return "protect_shadow_gap=0"; }

// LeakSanitizer stays on. The one leak it finds is LibTorch's: PyTorchStreamReader::init loses
// its 152-byte miniz reader when torch::load is given a truncated archive (test_zo_optimizer.cpp
// feeds it some on purpose). Suppressed by that function's name only, so ours would still show.
extern "C" const char* __lsan_default_suppressions() { return "leak:mz_zip_reader_init\n"; }

// Stop at the first report, with its stack, so that a report is a failed test, never a log line.
extern "C" const char* __ubsan_default_options() { return "halt_on_error=1:print_stacktrace=1"; }
