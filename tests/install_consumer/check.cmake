# CTest driver: install the build tree into a scratch prefix, then configure, build and run the
# consumer project and the C++ example (examples/cpp: it exits non-zero unless its loss decreases)
# against it. Inputs: BUILD_DIR, SOURCE_DIR, EXAMPLE_DIR, WORK_DIR, Torch_DIR, GENERATOR.
file(REMOVE_RECURSE "${WORK_DIR}")
include(${CMAKE_CURRENT_LIST_DIR}/../check_common.cmake)
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DTorch_DIR=${Torch_DIR}
    ${launcher})
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
run(${CMAKE_COMMAND} -S "${EXAMPLE_DIR}" -B "${WORK_DIR}/example" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DTorch_DIR=${Torch_DIR}
    ${launcher})
run(${CMAKE_COMMAND} --build "${WORK_DIR}/example")
run("${WORK_DIR}/example/distill")
