# CTest driver (registered when the main build has CUDA): the kernel library and its GoogleTest
# suites configured and built again with FUSEDKD_CUDA=OFF, as on a machine without nvcc, then
# three suites run (the softmax kernels, the shared math, the gradient scaling). It catches code
# that reaches a CUDA launcher outside `#if FUSEDKD_WITH_CUDA`, which the CUDA build cannot see. Inputs: SOURCE_DIR, WORK_DIR,
# GENERATOR, CBLAS_INCLUDE_DIR, CBLAS_LIBRARY, PREFIX_PATH (the main build's CMAKE_PREFIX_PATH,
# '|' for ';').
file(REMOVE_RECURSE "${WORK_DIR}")
include(${CMAKE_CURRENT_LIST_DIR}/../check_common.cmake)
string(REPLACE "|" ";" prefix_path "${PREFIX_PATH}")
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}" -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release
    -DFUSEDKD_CUDA=OFF -DFUSEDKD_BUILD_TORCH=OFF -DFUSEDKD_BUILD_BENCHMARKS=OFF
    -DFUSEDKD_CBLAS_INCLUDE_DIR=${CBLAS_INCLUDE_DIR} -DFUSEDKD_CBLAS_LIBRARY=${CBLAS_LIBRARY}
    "-DCMAKE_PREFIX_PATH=${prefix_path}" ${launcher})
run(${CMAKE_COMMAND} --build "${WORK_DIR}")
run("${WORK_DIR}/tests/test_softmax_kernels" --gtest_brief=1)
run("${WORK_DIR}/tests/test_math" --gtest_brief=1)
run("${WORK_DIR}/tests/test_scale_kernels" --gtest_brief=1)
