# ctest readme_example_matches: README.md's usage example must be the code that
# tests/test_readme_example.cpp compiles and runs. Usage: cmake -DREADME=... -DSOURCE=... -P <this>

# The text strictly between the line containing `begin` and the next line starting with `end`.
function(extract_block text begin end what out_var)
  string(FIND "${text}" "${begin}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${what}: '${begin}' not found")
  endif()
  string(SUBSTRING "${text}" ${at} -1 text)
  string(FIND "${text}" "\n" eol)
  math(EXPR eol "${eol} + 1")
  string(SUBSTRING "${text}" ${eol} -1 text)
  string(FIND "${text}" "\n${end}" stop)
  if(stop EQUAL -1)
    message(FATAL_ERROR "${what}: '${end}' after '${begin}' not found")
  endif()
  string(SUBSTRING "${text}" 0 ${stop} block)
  set(${out_var} "${block}" PARENT_SCOPE)
endfunction()

file(READ "${README}" readme)
file(READ "${SOURCE}" source)
# README: the ```cpp fence that follows <!-- readme-example -->.
string(FIND "${readme}" "<!-- readme-example" marker)
if(marker EQUAL -1)
  message(FATAL_ERROR "${README}: marker <!-- readme-example --> not found")
endif()
string(SUBSTRING "${readme}" ${marker} -1 readme)
extract_block("${readme}" "```cpp" "```" "${README}" readme_block)
extract_block("${source}" "// README example begins" "// README example ends" "${SOURCE}" source_block)
if(NOT readme_block STREQUAL source_block)
  message(FATAL_ERROR "README.md's example differs from ${SOURCE}; make them equal.\n"
                      "--- README.md:\n${readme_block}\n--- ${SOURCE}:\n${source_block}")
endif()
message(STATUS "README.md's example is the code of ${SOURCE}")
