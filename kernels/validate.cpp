#include "validate.h"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace fusedkd::detail {
namespace {

void check(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument("fusedkd: " + message);
}

void check_common(std::int64_t rows, std::int64_t cols, double temperature) {
  check(rows >= 0, "rows must be >= 0, got " + std::to_string(rows));
  check(cols >= 1, "cols (V) must be >= 1, got " + std::to_string(cols));
  check(cols <= std::numeric_limits<std::int32_t>::max(),
        "cols (V) must fit in 32 bits, got " + std::to_string(cols));
  check(std::isfinite(temperature) && temperature > 0,
        "temperature must be finite and > 0, got " + std::to_string(temperature));
}

}  // namespace

void validate(const SoftmaxForwardArgs& a) {
  check_common(a.rows, a.cols, a.temperature);
  check(a.input_row_stride >= 0, "input_row_stride must be >= 0");
  check(a.rows == 0 || (a.input && a.output), "input and output must not be null");
}

void validate(const SoftmaxBackwardArgs& a) {
  check_common(a.rows, a.cols, a.temperature);
  check(a.grad_output_row_stride >= 0 && a.output_row_stride >= 0, "row strides must be >= 0");
  check(a.rows == 0 || (a.grad_output && a.output && a.grad_input),
        "grad_output, output and grad_input must not be null");
}

void validate(const SoftTargetArgs& a) {
  check_common(a.rows, a.cols, a.temperature);
  check(a.student_row_stride >= 0 && a.teacher_row_stride >= 0, "row strides must be >= 0");
  check(a.rows == 0 || (a.student && a.teacher), "student and teacher must not be null");
  check(a.loss != nullptr, "loss must not be null");
  check(a.rows == 0 || a.per_row_loss || a.workspace, "workspace must not be null");
  check(a.divergence != Divergence::JSD || (a.beta > 0 && a.beta < 1),
        "beta must be in (0, 1) for Divergence::JSD (0 and 1 are ForwardKL and ReverseKL)");
  check(std::isfinite(a.soft_scale) && std::isfinite(a.hard_scale), "scales must be finite");
  check(a.hard_scale == 0.0 || a.labels != nullptr, "hard_scale != 0 needs labels");
  check(!a.per_row_loss || (a.labels == nullptr && a.hard_scale == 0.0),
        "per-row losses are for the soft divergence alone (no labels)");
}

void validate(const ScaleRowsArgs& a) {
  check(a.rows >= 0 && a.cols >= 0, "rows and cols must be >= 0");
  check(a.rows == 0 || a.cols == 0 || (a.grad && a.grad_output), "grad and grad_output must not be null");
}

void validate_labels_on_host(const SoftTargetArgs& a) {
  if (!a.labels) return;
  for (std::int64_t r = 0; r < a.rows; ++r) {
    const std::int64_t y = a.labels[r];
    check(y == a.ignore_index || (y >= 0 && y < a.cols),
          "label " + std::to_string(y) + " of row " + std::to_string(r) + " is outside [0, " +
              std::to_string(a.cols) + ") and is not ignore_index (" + std::to_string(a.ignore_index) + ")");
  }
}

std::int64_t rows_per_task(std::int64_t cols) {
  const std::int64_t rows = (std::int64_t{1} << 14) / cols;
  return rows < 1 ? 1 : rows;
}

}  // namespace fusedkd::detail

namespace fusedkd {

bool soft_target_uses_double(const SoftTargetArgs& a) {
  return a.student_dtype == DType::Float64 || a.teacher_dtype == DType::Float64;
}

// Row losses (accumulation type), then, 16-byte aligned, the weight of a valid row (the CUDA
// kernels compute it on the device from the labels).
std::size_t soft_target_workspace_bytes(const SoftTargetArgs& a) {
  const std::size_t acc = soft_target_uses_double(a) ? 8 : 4;
  return static_cast<std::size_t>(a.rows) * acc + 64;
}

}  // namespace fusedkd
