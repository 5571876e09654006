# ctest bench_sweep.smoke: runs `bench_sweep --smoke` and checks that every JSON line carries the
# fields docs/performance.md "What aten and limit mean" documents, and that the limit is the faster
# of its two reference passes (so fraction_of_limit <= fraction_of_dtype_limit).
#   cmake -DBENCH=path/to/bench_sweep -P check_sweep_json.cmake
if(NOT BENCH)
  message(FATAL_ERROR "check_sweep_json.cmake: pass -DBENCH=<bench_sweep executable>")
endif()
execute_process(COMMAND "${BENCH}" --smoke RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "bench_sweep --smoke exited with ${rc}:\n${out}\n${err}")
endif()
set(fields device kernels case dtype dist rounding numel tensors terms threads repeats zotorch_gbps aten_gbps
           limit_gbps copy_gbps speedup_vs_aten fraction_of_limit zotorch_cpu_gbps aten_cpu_gbps limit_cpu_gbps
           speedup_vs_aten_cpu fraction_of_limit_cpu aten_impl aten_candidates_gbps limit_impl dtype_limit_gbps
           fraction_of_dtype_limit dtype_limit_cpu_gbps fraction_of_dtype_limit_cpu)
string(REPLACE "\n" ";" lines "${out}")
set(rows 0)
foreach(line IN LISTS lines)
  if(NOT line MATCHES "^{")
    continue()
  endif()
  math(EXPR rows "${rows} + 1")
  foreach(field IN LISTS fields)
    if(NOT line MATCHES "\"${field}\":")
      message(FATAL_ERROR "bench_sweep --smoke: no \"${field}\" in\n${line}")
    endif()
  endforeach()
  # The chosen ATen draw is one of the candidates, with the candidates' best figure.
  string(REGEX MATCH "\"aten_impl\":\"([a-z_0-9]+)\"" _ "${line}")
  set(impl "${CMAKE_MATCH_1}")
  if(NOT line MATCHES "\"aten_candidates_gbps\":{[^}]*\"${impl}\":")
    message(FATAL_ERROR "bench_sweep --smoke: aten_impl '${impl}' is not among aten_candidates_gbps in\n${line}")
  endif()
  foreach(pair "limit_gbps;dtype_limit_gbps" "limit_cpu_gbps;dtype_limit_cpu_gbps")
    list(GET pair 0 a)
    list(GET pair 1 b)
    string(REGEX MATCH "\"${a}\":([0-9.]+)" _ "${line}")
    set(va "${CMAKE_MATCH_1}")
    string(REGEX MATCH "\"${b}\":([0-9.]+)" _ "${line}")
    set(vb "${CMAKE_MATCH_1}")
    if(va LESS vb)
      message(FATAL_ERROR "bench_sweep --smoke: ${a} ${va} < ${b} ${vb}: the limit must be the faster pass\n${line}")
    endif()
  endforeach()
endforeach()
# Every CPU path the sweep has: each dtype with each distribution, and stochastic rounding for both
# 16-bit types (their AVX-512 passes are separate code).
foreach(row "float32\",\"dist\":\"rademacher\",\"rounding\":\"nearest"
            "float32\",\"dist\":\"gaussian\",\"rounding\":\"nearest"
            "bfloat16\",\"dist\":\"rademacher\",\"rounding\":\"stochastic"
            "bfloat16\",\"dist\":\"gaussian\",\"rounding\":\"nearest"
            "float16\",\"dist\":\"rademacher\",\"rounding\":\"nearest"
            "float16\",\"dist\":\"rademacher\",\"rounding\":\"stochastic"
            "float16\",\"dist\":\"gaussian\",\"rounding\":\"stochastic")
  string(FIND "${out}" "\"dtype\":\"${row}\"" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "bench_sweep --smoke: no row with dtype ${row}")
  endif()
endforeach()
if(rows EQUAL 0)
  message(FATAL_ERROR "bench_sweep --smoke printed no JSON line:\n${out}\n${err}")
endif()
message(STATUS "bench_sweep --smoke: ${rows} JSON lines, every field present")
