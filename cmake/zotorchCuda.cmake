# The two ways a program gets zotorch's CUDA kernels (docs/design.md "Packaging"), shared by
# the build tree and the installed package: the zotorch::cuda target for a single executable, and
# zotorch_add_cuda_kernels(<target>) for everything else, static libraries included.
#
# Before including this file, set ZOTORCH_CUDA_KERNELS_SOURCE to share/zotorch/cuda_kernels.cu and
# ZOTORCH_CUDA_TARGET_GLOBAL to TRUE where zotorch::cuda must be visible project-wide.
include_guard(GLOBAL)
include("${CMAKE_CURRENT_LIST_DIR}/zotorchTorch.cmake")

set_property(GLOBAL PROPERTY ZOTORCH_CUDA_KERNELS_SOURCE "${ZOTORCH_CUDA_KERNELS_SOURCE}")

# An executable with .cu sources links CMake's default static libcudart, a second CUDA runtime next
# to the one libtorch_cuda loads; kernels and torch's streams must share one, so default to shared.
if(NOT DEFINED CMAKE_CUDA_RUNTIME_LIBRARY)
  set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
endif()

function(_zotorch_require_cuda_language caller)
  get_property(languages GLOBAL PROPERTY ENABLED_LANGUAGES)
  if(NOT "CUDA" IN_LIST languages)
    message(FATAL_ERROR "${caller}: the CUDA language is not enabled in this project. Call "
                        "enable_language(CUDA) (or project(... LANGUAGES CXX CUDA)) first; it needs nvcc and a "
                        "CUDA build of LibTorch.")
  endif()
endfunction()

# docs/cuda.md "Compiler requirements": the kernels equal the CPU bit for bit only with IEEE division
# and square root and with subnormals kept. nvcc defines no macro for --use_fast_math, -ftz,
# -prec-div or -prec-sqrt, so the kernels' header cannot refuse them; the build puts these flags last
# on the kernels' command line instead: an explicit value overrides what --use_fast_math implies,
# and of two explicit values the last one wins. tests/cuda/check_exact_ptx.cmake checks it.
set(ZOTORCH_CUDA_EXACT_FLAGS -ftz=false -prec-div=true -prec-sqrt=true -fmad=true)
set_property(GLOBAL PROPERTY ZOTORCH_CUDA_EXACT_FLAGS ${ZOTORCH_CUDA_EXACT_FLAGS})

# Source-file COMPILE_OPTIONS come after every flag of the target and of CMAKE_CUDA_FLAGS, but they
# are per directory, and zotorch::cuda compiles the .cu in whichever directory its consumer lives.
# So: set them in `dir` and, recursively, in all of its subdirectories (idempotent).
function(_zotorch_force_exact_cuda_flags dir)
  get_property(source GLOBAL PROPERTY ZOTORCH_CUDA_KERNELS_SOURCE)
  get_property(flags GLOBAL PROPERTY ZOTORCH_CUDA_EXACT_FLAGS)
  get_property(options SOURCE "${source}" DIRECTORY "${dir}" PROPERTY COMPILE_OPTIONS)
  list(REMOVE_ITEM options ${flags})
  set_property(SOURCE "${source}" DIRECTORY "${dir}" PROPERTY COMPILE_OPTIONS ${options} ${flags})
  get_property(subdirectories DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(subdirectory IN LISTS subdirectories)
    _zotorch_force_exact_cuda_flags("${subdirectory}")
  endforeach()
endfunction()
# At the end of the top-level directory every target that can compile the .cu exists.
get_property(_zotorch_exact_deferred GLOBAL PROPERTY ZOTORCH_CUDA_EXACT_DEFERRED)
if(NOT _zotorch_exact_deferred)
  set_property(GLOBAL PROPERTY ZOTORCH_CUDA_EXACT_DEFERRED TRUE)
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _zotorch_force_exact_cuda_flags "${CMAKE_SOURCE_DIR}")
endif()

# zotorch::cuda: an INTERFACE target whose only content is the kernels' source, compiled into each
# executable that links it. Do not link it into a library: see zotorch_add_cuda_kernels. The .cu gets
# LibTorch's C++ standard through torch's compile features (see zotorch_enable_cuda20).
if(NOT TARGET zotorch::cuda)
  if(ZOTORCH_CUDA_TARGET_GLOBAL)
    add_library(zotorch::cuda INTERFACE IMPORTED GLOBAL)
  else()
    add_library(zotorch::cuda INTERFACE IMPORTED)
  endif()
  set_property(TARGET zotorch::cuda PROPERTY INTERFACE_SOURCES "${ZOTORCH_CUDA_KERNELS_SOURCE}")
  set_property(TARGET zotorch::cuda PROPERTY INTERFACE_LINK_LIBRARIES zotorch::zotorch)
endif()

# The OBJECT library zotorch_cuda_kernels, created once. Its compile flags are those of the directory
# that creates it, so zotorch's own CMakeLists creates it next to find_package(Torch), where
# LibTorch's architecture flags and the C++20 settings live, even when zotorch is a subdirectory.
function(zotorch_create_cuda_kernels_target)
  if(TARGET zotorch_cuda_kernels)
    return()
  endif()
  _zotorch_require_cuda_language(zotorch_add_cuda_kernels)
  get_property(source GLOBAL PROPERTY ZOTORCH_CUDA_KERNELS_SOURCE)
  add_library(zotorch_cuda_kernels OBJECT "${source}")
  target_link_libraries(zotorch_cuda_kernels PRIVATE zotorch::zotorch)
  # One CUDA runtime per process: torch's shared libcudart, never a static copy beside it.
  set_target_properties(zotorch_cuda_kernels PROPERTIES CUDA_RUNTIME_LIBRARY Shared POSITION_INDEPENDENT_CODE ON)
  _zotorch_force_exact_cuda_flags("${CMAKE_CURRENT_SOURCE_DIR}")
endfunction()

#[=======================================================================[.rst:
zotorch_add_cuda_kernels(<target>)

Compiles share/zotorch/cuda_kernels.cu once per project (an OBJECT library, zotorch_cuda_kernels)
and makes <target> carry its object file. An object file inside a static archive is dropped by the
linker when nothing references it, and the kernels' registrar is referenced by nobody, so for a
STATIC library the object goes into the library's link interface instead: every program linking that
library gets the object file itself on its link line. Executables and shared libraries link it
directly. Call it for one target per program; the program must not also link zotorch::cuda.
#]=======================================================================]
function(zotorch_add_cuda_kernels target)
  if(NOT TARGET ${target})
    message(FATAL_ERROR "zotorch_add_cuda_kernels: '${target}' is not a target; create it first")
  endif()
  _zotorch_require_cuda_language(zotorch_add_cuda_kernels)
  zotorch_create_cuda_kernels_target()
  # Properties rather than target_link_libraries, which would clash with whichever signature
  # (plain or PRIVATE/PUBLIC) the caller already used for <target>.
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "STATIC_LIBRARY" OR type STREQUAL "OBJECT_LIBRARY" OR type STREQUAL "INTERFACE_LIBRARY")
    set_property(TARGET ${target} APPEND PROPERTY INTERFACE_LINK_LIBRARIES
                 "$<TARGET_OBJECTS:zotorch_cuda_kernels>" zotorch::zotorch)
    if(NOT type STREQUAL "INTERFACE_LIBRARY")
      set_property(TARGET ${target} APPEND PROPERTY LINK_LIBRARIES zotorch::zotorch)
    endif()
  else()
    set_property(TARGET ${target} APPEND PROPERTY LINK_LIBRARIES "$<TARGET_OBJECTS:zotorch_cuda_kernels>"
                 zotorch::zotorch)
  endif()
  add_dependencies(${target} zotorch_cuda_kernels)
endfunction()
