# zotorch::cpu_kernels (docs/design.md "Packaging"), shared by the build tree and the installed
# package: the CPU sweep kernels compiled once per project instead of in every translation unit that
# includes zotorch. Header-only use stays the default; a program with several such translation
# units, or a project with several programs, links this target to stop paying the kernels' code
# generation (about a minute at -O3) in each of them.
#
# Before including this file, set ZOTORCH_CPU_KERNELS_SOURCE to share/zotorch/cpu_kernels.cpp.
include_guard(GLOBAL)

set_property(GLOBAL PROPERTY ZOTORCH_CPU_KERNELS_SOURCE "${ZOTORCH_CPU_KERNELS_SOURCE}")

#[=======================================================================[.rst:
zotorch_create_cpu_kernels_target(<name> [COMPILE_OPTIONS <option>...])

Creates the OBJECT library <name> from share/zotorch/cpu_kernels.cpp, built only when something
links it. Linking it (target_link_libraries) puts its object file into the program or library and
defines ZOTORCH_COMPILED_CPU_KERNELS for the linking target's sources, so that their sweeps call the
compiled kernels. Every translation unit of a program should agree on that macro; linking the target
into each target of the program that includes zotorch does it. COMPILE_OPTIONS are for a variant
built with other flags, e.g. a sanitizer build whose kernels must be instrumented too.
#]=======================================================================]
function(zotorch_create_cpu_kernels_target name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "COMPILE_OPTIONS")
  if(TARGET ${name})
    return()
  endif()
  get_property(source GLOBAL PROPERTY ZOTORCH_CPU_KERNELS_SOURCE)
  add_library(${name} OBJECT EXCLUDE_FROM_ALL "${source}")
  target_link_libraries(${name} PUBLIC zotorch::zotorch)
  target_compile_definitions(${name} PUBLIC ZOTORCH_COMPILED_CPU_KERNELS)
  target_compile_options(${name} PRIVATE ${arg_COMPILE_OPTIONS})
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
endfunction()

if(NOT TARGET zotorch::cpu_kernels)
  zotorch_create_cpu_kernels_target(zotorch_cpu_kernels)
  add_library(zotorch::cpu_kernels ALIAS zotorch_cpu_kernels)
endif()
