// The Catch2 main shared by zotorch_tests and zotorch_cuda_tests: one file so that the precompiled
// header of the test executable is built once, and every tests/test_*.cpp only registers cases.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
