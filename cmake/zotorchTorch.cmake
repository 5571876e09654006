# How zotorch finds LibTorch, shared by the build tree and the installed zotorchConfig.cmake so a
# consumer gets exactly what our tests got: the wheel's own CUDA libraries first, a CUDA LibTorch
# usable on a machine without a CUDA toolkit, and the C++ standard the found LibTorch demands.
include_guard(GLOBAL)

# A CUDA build of LibTorch (the PyPI wheel is one) runs Caffe2's public/cuda.cmake, which stops with
# FATAL_ERROR when no CUDA toolkit exists, although such a LibTorch runs fine on CPU. cuda.cmake
# returns early when torch::cudart already exists, so on a machine without nvcc we predefine it:
# libtorch_cuda.so still finds its own libcudart through its RPATH, and zotorch then builds for
# CPU only. Skipped when ZOTORCH_CUDA is ON, so that a missing toolkit is an error there.
macro(zotorch_prepare_torch_without_cuda_toolkit)
  if(NOT TARGET torch::cudart AND NOT TARGET torch AND NOT ZOTORCH_CUDA STREQUAL "ON")
    if(NOT DEFINED CMAKE_CUDA_COMPILER)
      include(CheckLanguage)
      check_language(CUDA)
    endif()
    if(NOT CMAKE_CUDA_COMPILER)
      message(STATUS "zotorch: no CUDA compiler found; a CUDA LibTorch will be used for CPU tensors only")
      add_library(torch::cudart INTERFACE IMPORTED)
      set(ZOTORCH_TORCH_CUDA_STUBBED TRUE)
    endif()
  endif()
endmacro()

# Without a visible GPU, Caffe2's cuda.cmake compiles for a list of "common" architectures that
# starts at sm_50, which nvcc 13 no longer accepts, and which costs one device compilation per entry.
# A machine without a GPU only needs the CUDA code to compile and link, so two architectures do
# (pre-Hopper and Hopper); TORCH_CUDA_ARCH_LIST, as a variable or in the environment, overrides.
macro(zotorch_default_cuda_arch_list)
  # (Nothing to choose when the check above found no CUDA compiler.)
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL ""
     AND NOT (DEFINED CMAKE_CUDA_COMPILER AND NOT CMAKE_CUDA_COMPILER))
    find_program(ZOTORCH_NVIDIA_SMI nvidia-smi)
    set(_zotorch_gpus "")
    if(ZOTORCH_NVIDIA_SMI)
      execute_process(COMMAND "${ZOTORCH_NVIDIA_SMI}" --query-gpu=compute_cap --format=csv,noheader
                      OUTPUT_VARIABLE _zotorch_gpus ERROR_QUIET TIMEOUT 20)
    endif()
    if(NOT _zotorch_gpus MATCHES "[0-9]")
      set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
      message(STATUS "zotorch: no GPU visible; CUDA code is compiled for TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}")
    endif()
  endif()
endmacro()

# The wheel's libtorch_cuda.so finds cuDNN, NCCL and cudart in ../../nvidia/*/lib through its RPATH,
# but GNU ld consults a program's -rpath (which CMake fills with e.g. /usr/local/cuda/lib) before
# a library's own RPATH, so an older system libnccl wins and the link fails (undefined ncclSignal),
# and at run time a program would load the toolkit's libcudart next to torch's. Putting the
# wheel's directories first in both the link-time search and the run path keeps one CUDA runtime.
function(zotorch_use_torch_wheel_libraries)
  if(NOT TARGET torch OR NOT DEFINED TORCH_INSTALL_PREFIX)
    return()
  endif()
  get_property(done TARGET torch PROPERTY ZOTORCH_WHEEL_PATHS_SET)
  get_filename_component(site_packages "${TORCH_INSTALL_PREFIX}/.." ABSOLUTE)
  if(done OR NOT IS_DIRECTORY "${site_packages}/nvidia" OR CMAKE_SYSTEM_NAME STREQUAL "Windows")
    return()
  endif()
  file(GLOB wheel_lib_dirs LIST_DIRECTORIES true "${site_packages}/nvidia/*/lib")
  list(PREPEND wheel_lib_dirs "${TORCH_INSTALL_PREFIX}/lib")
  string(REPLACE ";" ":" search_path "${wheel_lib_dirs}")
  set_property(TARGET torch APPEND PROPERTY INTERFACE_LINK_OPTIONS
               "LINKER:-rpath-link,${search_path}" "LINKER:-rpath,${search_path}")
  set_property(TARGET torch PROPERTY ZOTORCH_WHEEL_PATHS_SET TRUE)
endfunction()

# The CPU sweep runs in at::parallel_for, which is inline: with LibTorch's OpenMP backend (the
# wheels' default, ATen/Config.h AT_PARALLEL_OPENMP) the parallel region is compiled in the
# consumer's translation unit, and without -fopenmp it silently runs on one thread
# (docs/performance.md "Threads"). So a program that links torch through zotorch gets -fopenmp for
# C++ and the OpenMP runtime LibTorch itself loads (the wheel ships its own libgomp.so.1; linking the
# system's instead would put two runtimes in one process), as torch's C++ extensions do.
function(zotorch_use_torch_openmp)
  if(NOT TARGET torch OR NOT DEFINED TORCH_INSTALL_PREFIX)
    return()
  endif()
  get_property(done TARGET torch PROPERTY ZOTORCH_OPENMP_SET)
  set(config "${TORCH_INSTALL_PREFIX}/include/ATen/Config.h")
  if(done OR NOT EXISTS "${config}" OR MSVC)
    return()
  endif()
  file(STRINGS "${config}" openmp REGEX "^#define AT_PARALLEL_OPENMP 1")
  if(NOT openmp)
    return()
  endif()
  set(runtime "")
  foreach(name libgomp.so.1 libomp.so libiomp5.so)
    if(EXISTS "${TORCH_INSTALL_PREFIX}/lib/${name}")
      set(runtime "${TORCH_INSTALL_PREFIX}/lib/${name}")
      break()
    endif()
  endforeach()
  if(runtime)
    set_property(TARGET torch APPEND PROPERTY INTERFACE_COMPILE_OPTIONS "$<$<COMPILE_LANGUAGE:CXX>:-fopenmp>")
    set_property(TARGET torch APPEND PROPERTY INTERFACE_LINK_LIBRARIES "${runtime}")
  else()
    # A LibTorch built against the system's OpenMP (a distribution package): use that one.
    find_package(OpenMP COMPONENTS CXX)
    if(NOT OpenMP_CXX_FOUND)
      message(WARNING "zotorch: LibTorch uses OpenMP but no OpenMP for C++ was found; CPU sweeps will run on one thread")
      return()
    endif()
    set_property(TARGET torch APPEND PROPERTY INTERFACE_COMPILE_OPTIONS
                 "$<$<COMPILE_LANGUAGE:CXX>:${OpenMP_CXX_FLAGS}>")
    set_property(TARGET torch APPEND PROPERTY INTERFACE_LINK_LIBRARIES "${OpenMP_CXX_LIBRARIES}")
  endif()
  set_property(TARGET torch PROPERTY ZOTORCH_OPENMP_SET TRUE)
endfunction()

# LibTorch 2.13+ puts cxx_std_20 on the torch target, which CMake also demands of the .cu files of
# any target that links torch; CMake < 3.26 does not know how to ask nvcc for C++20 and stops with
# "requires the language dialect CUDA20". nvcc 12+ accepts -std=c++20, so tell CMake so.
macro(zotorch_enable_cuda20)
  if(CMAKE_CUDA_COMPILER_LOADED AND CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA"
     AND CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.0
     AND NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_COMPILE_FEATURES cuda_std_20)
    if(NOT "cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
      list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
    endif()
  endif()
endmacro()

# The C++ standard the found LibTorch requires: 20 for LibTorch 2.13+ (its TorchConfig adds
# cxx_std_20 or -std=c++20 to the torch target), 17 before.
function(zotorch_torch_cxx_standard out_var)
  set(standard 17)
  if(TARGET torch)
    get_target_property(features torch INTERFACE_COMPILE_FEATURES)
    get_target_property(options torch INTERFACE_COMPILE_OPTIONS)
    if("cxx_std_20" IN_LIST features OR "${options}" MATCHES "c\\+\\+20")
      set(standard 20)
    endif()
    if("cxx_std_23" IN_LIST features OR "${options}" MATCHES "c\\+\\+23")
      set(standard 23)
    endif()
  endif()
  set(${out_var} ${standard} PARENT_SCOPE)
endfunction()

# The CUDA major version LibTorch was built with ("" when unknown or a CPU build): the wheel records
# it in torch/version.py; LibTorch zips in build-version (e.g. 2.15.0+cu132).
function(zotorch_torch_cuda_version out_var)
  set(version "")
  if(DEFINED TORCH_INSTALL_PREFIX)
    if(EXISTS "${TORCH_INSTALL_PREFIX}/version.py")
      file(STRINGS "${TORCH_INSTALL_PREFIX}/version.py" line REGEX "^cuda[: ].*'[0-9.]+'")
      if(line MATCHES "'([0-9]+\\.[0-9]+)'")
        set(version "${CMAKE_MATCH_1}")
      endif()
    elseif(EXISTS "${TORCH_INSTALL_PREFIX}/build-version")
      file(STRINGS "${TORCH_INSTALL_PREFIX}/build-version" line LIMIT_COUNT 1)
      if(line MATCHES "\\+cu([0-9]+)([0-9])$")
        set(version "${CMAKE_MATCH_1}.${CMAKE_MATCH_2}")
      endif()
    endif()
  endif()
  set(${out_var} "${version}" PARENT_SCOPE)
endfunction()

# Whether this project can compile zotorch's CUDA kernels against the found LibTorch; sets
# <out_var> to TRUE/FALSE and <reason_var> to why not. Kernels built by a CUDA major other than
# LibTorch's would load a second libcudart beside torch's, and the two do not share streams.
function(zotorch_cuda_usable out_var reason_var)
  set(usable FALSE)
  set(reason "")
  get_property(languages GLOBAL PROPERTY ENABLED_LANGUAGES)
  if(NOT TARGET torch_cuda AND NOT TARGET c10_cuda)
    set(reason "the found LibTorch is a CPU-only build")
  elseif(ZOTORCH_TORCH_CUDA_STUBBED OR NOT "CUDA" IN_LIST languages)
    set(reason "no CUDA compiler (nvcc) was found; set CMAKE_CUDA_COMPILER or put nvcc on PATH")
  else()
    zotorch_torch_cuda_version(torch_cuda)
    string(REGEX MATCH "^[0-9]+" torch_major "${torch_cuda}")
    string(REGEX MATCH "^[0-9]+" nvcc_major "${CMAKE_CUDA_COMPILER_VERSION}")
    if(torch_major AND NOT torch_major STREQUAL nvcc_major)
      set(reason "LibTorch was built with CUDA ${torch_cuda} but nvcc is ${CMAKE_CUDA_COMPILER_VERSION}; "
                 "install a CUDA ${torch_major}.x toolkit (or the LibTorch build for CUDA ${nvcc_major})")
    else()
      set(usable TRUE)
    endif()
  endif()
  set(${out_var} ${usable} PARENT_SCOPE)
  set(${reason_var} "${reason}" PARENT_SCOPE)
endfunction()
