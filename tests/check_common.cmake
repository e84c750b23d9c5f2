# Shared by the CTest driver scripts (install_consumer/check.cmake, sanitized_cpu/check.cmake):
# run() stops the script on the first failing command; `launcher` puts ccache in front of the C++
# compiler of a nested build when there is one.
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "failed (${result}): ${ARGV}")
  endif()
endfunction()
set(launcher)
find_program(CCACHE ccache)
if(CCACHE)
  set(launcher -DCMAKE_CXX_COMPILER_LAUNCHER=${CCACHE})
endif()
