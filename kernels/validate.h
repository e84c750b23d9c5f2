// Argument checks shared by the CPU and CUDA launchers (the ops check first, with their own
// messages; these guard the raw kernel API).
#pragma once

#include "fusedkd/softmax.h"

namespace fusedkd::detail {

void validate(const SoftmaxForwardArgs& args);
void validate(const SoftmaxBackwardArgs& args);

// Rows handed to one task, so that each task has some 16k elements of work.
std::int64_t rows_per_task(std::int64_t cols);

}  // namespace fusedkd::detail
