# CTest driver (registered when the main build has CUDA): the whole project built again for the CPU
# alone (FUSEDKD_CUDA=OFF, as on a machine without nvcc) under AddressSanitizer, LeakSanitizer and
# UndefinedBehaviorSanitizer (-fno-sanitize-recover: the first finding fails the run), then every
# GoogleTest suite's CPU cases run there: the kernel suites under each instruction-set copy
# (FUSEDKD_CPU_ISA=baseline, avx2, and the widest this CPU has), the op suites (LibTorch, which is
# not instrumented itself) once. It catches memory errors, leaks and undefined behaviour in the
# kernels, the op layer and the tests, and code that reaches a CUDA launcher outside
# `#if FUSEDKD_WITH_CUDA`, which the CUDA build cannot see. Left out: test_large_index (it reads
# 2^31-element zero-page mappings: minutes under ASan; it runs in the main build) and the demo.
# Inputs: SOURCE_DIR, WORK_DIR, GENERATOR, CBLAS_INCLUDE_DIR, CBLAS_LIBRARY, PREFIX_PATH (the main
# build's CMAKE_PREFIX_PATH, '|' for ';').
include(${CMAKE_CURRENT_LIST_DIR}/../check_common.cmake)
string(REPLACE "|" ";" prefix_path "${PREFIX_PATH}")
set(sanitize "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer")
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}" -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release
    -DFUSEDKD_CUDA=OFF -DFUSEDKD_BUILD_TORCH=ON -DFUSEDKD_BUILD_BENCHMARKS=OFF -DFUSEDKD_BUILD_DEMO=OFF
    "-DCMAKE_CXX_FLAGS=${sanitize}" "-DCMAKE_EXE_LINKER_FLAGS=${sanitize}" "-DCMAKE_SHARED_LINKER_FLAGS=${sanitize}"
    -DFUSEDKD_CBLAS_INCLUDE_DIR=${CBLAS_INCLUDE_DIR} -DFUSEDKD_CBLAS_LIBRARY=${CBLAS_LIBRARY}
    "-DCMAKE_PREFIX_PATH=${prefix_path}" ${launcher})
run(${CMAKE_COMMAND} --build "${WORK_DIR}")

set(ENV{ASAN_OPTIONS} "detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1")
set(ENV{UBSAN_OPTIONS} "print_stacktrace=1:halt_on_error=1")
set(cpu_cases "--gtest_filter=-*Cuda*:*cuda*")
set(kernel_suites test_math test_launch_plan test_softmax_kernels test_soft_target_kernels test_feature_kernels
                  test_scale_kernels)
set(op_suites test_softmax_ops test_soft_target_op_composites test_soft_target_op_autograd_dtypes_errors
              test_feature_ops test_concurrency)
foreach(isa baseline avx2 widest)
  if(isa STREQUAL "widest")
    unset(ENV{FUSEDKD_CPU_ISA})
  else()
    set(ENV{FUSEDKD_CPU_ISA} ${isa})
  endif()
  foreach(suite IN LISTS kernel_suites)
    message(STATUS "${suite} (${isa})")
    run("${WORK_DIR}/tests/${suite}" --gtest_brief=1 ${cpu_cases})
  endforeach()
endforeach()
foreach(suite IN LISTS op_suites)
  message(STATUS "${suite}")
  run("${WORK_DIR}/tests/${suite}" --gtest_brief=1 ${cpu_cases})
endforeach()
