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

std::int64_t rows_per_task(std::int64_t cols) {
  const std::int64_t rows = (std::int64_t{1} << 14) / cols;
  return rows < 1 ? 1 : rows;
}

}  // namespace fusedkd::detail
