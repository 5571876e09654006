# The examples' shared headers (examples/common/) as one INTERFACE target, zotorch_examples_common,
# for every program or test that includes them: the examples, the unit tests of their loaders and
# the benchmarks. It carries the Debian libraries they use (docs/examples.md "Libraries"):
# nlohmann-json (nlohmann-json3-dev) for JSON, CLI11 (libcli11-dev) for command lines; both are
# header-only. Sets ZOTORCH_EXAMPLES_COMMON_FOUND; when a library is missing, the warning says
# which package to install (scripts/bootstrap.sh installs both). Included by tests/, examples/ and
# benchmarks/: each inclusion sets the variables in its own scope, the target is made once.

find_package(nlohmann_json 3 QUIET)
find_package(CLI11 2 QUIET)
set(ZOTORCH_EXAMPLES_COMMON_FOUND OFF)
set(ZOTORCH_EXAMPLES_COMMON_MISSING "")
if(NOT nlohmann_json_FOUND)
  list(APPEND ZOTORCH_EXAMPLES_COMMON_MISSING "nlohmann-json3-dev (nlohmann/json.hpp)")
endif()
if(NOT CLI11_FOUND)
  list(APPEND ZOTORCH_EXAMPLES_COMMON_MISSING "libcli11-dev (CLI/CLI.hpp)")
endif()
list(JOIN ZOTORCH_EXAMPLES_COMMON_MISSING " and " ZOTORCH_EXAMPLES_COMMON_MISSING)

if(NOT ZOTORCH_EXAMPLES_COMMON_MISSING)
  set(ZOTORCH_EXAMPLES_COMMON_FOUND ON)
endif()
if(ZOTORCH_EXAMPLES_COMMON_FOUND AND NOT TARGET zotorch_examples_common)
  # Global, so that the target made in one directory links the same libraries in the others.
  set_target_properties(nlohmann_json::nlohmann_json CLI11::CLI11 PROPERTIES IMPORTED_GLOBAL TRUE)
  add_library(zotorch_examples_common INTERFACE)
  target_include_directories(zotorch_examples_common INTERFACE "${CMAKE_CURRENT_LIST_DIR}")
  target_link_libraries(zotorch_examples_common INTERFACE nlohmann_json::nlohmann_json CLI11::CLI11)
endif()
