#include "validate.h"

#include <algorithm>
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

void validate(const FeatureMseArgs& a) {
  check(a.numel >= 0, "numel must be >= 0, got " + std::to_string(a.numel));
  check(a.numel == 0 || (a.student && a.teacher), "student and teacher must not be null");
  check(a.loss != nullptr || (a.elementwise_loss && a.numel == 0), "loss must not be null");
  check(a.numel == 0 || a.elementwise_loss || a.workspace, "workspace must not be null");
  check(std::isfinite(a.scale), "scale must be finite");
  check(!a.bias || (a.bias_channels >= 1 && a.bias_inner >= 1), "bias_channels and bias_inner must be >= 1");
  check(!(a.float16_gradients_in_float32 && a.student_dtype == DType::Float16 && a.grad_student == a.student &&
          a.numel > 0),
        "a float16 student's float32 gradient cannot overwrite the student");
}

void validate(const ScaleElementsArgs& a) {
  check(a.numel >= 0, "numel must be >= 0");
  check(a.numel == 0 || (a.data && a.factors), "data and factors must not be null");
  check(a.factor_group >= 1, "factor_group must be >= 1");
  check(a.factor_group >= a.numel || a.numel % a.factor_group == 0, "factor_group must divide numel");
}

void check_cuda_gradient_dtypes(bool float16_gradients_in_float32, const char* launcher) {
  if (float16_gradients_in_float32) {
    throw std::invalid_argument(std::string(launcher) +
                                ": float16_gradients_in_float32 is a CPU launcher option (the CUDA kernels write each "
                                "gradient in its input's dtype)");
  }
}

int blas_int(std::int64_t value, const char* what) {
  check(value <= std::numeric_limits<std::int32_t>::max(),
        std::string(what) + " = " + std::to_string(value) + " exceeds the 32-bit sizes of BLAS");
  return static_cast<int>(value);
}

void validate(const AttentionTransferArgs& a) {
  check(a.batch >= 0 && a.spatial >= 1, "batch must be >= 0 and spatial >= 1");
  check(a.student.channels >= 1 && a.teacher.channels >= 1, "channels must be >= 1");
  check(a.batch == 0 || (a.student.data && a.teacher.data), "student and teacher must not be null");
  check(a.loss != nullptr || (a.per_row_loss && a.batch == 0), "loss must not be null");
  check(a.batch == 0 || a.workspace, "workspace must not be null");
  check(std::isfinite(a.p) && a.p > 0, "p must be finite and > 0, got " + std::to_string(a.p));
  check(std::isfinite(a.scale), "scale must be finite");
}

void validate(const SimilarityPreservingArgs& a) {
  check(a.rows >= 0 && a.student_cols >= 1 && a.teacher_cols >= 1, "rows must be >= 0 and cols >= 1");
  check(a.student_row_stride >= a.student_cols && a.teacher_row_stride >= a.teacher_cols,
        "row strides must be >= cols (the BLAS leading dimension)");
  check(a.rows == 0 || (a.student && a.teacher && a.workspace), "student, teacher and workspace must not be null");
  check(a.loss != nullptr, "loss must not be null");
}

namespace {
void validate_shape(const ProjectionShape& s) {
  check(s.batch >= 0 && s.in_channels >= 1 && s.out_channels >= 1 && s.spatial >= 1,
        "batch must be >= 0; channels and spatial >= 1");
  check(s.batch == 0 || (s.student && s.weight), "student and weight must not be null");
  if (s.channels_last) {
    check(s.channel_stride == 1 && s.spatial_stride >= s.in_channels && s.batch_stride == s.spatial * s.spatial_stride,
          "a channels-last student needs channel_stride 1, spatial_stride >= in_channels and "
          "batch_stride = spatial * spatial_stride");
  } else {
    check(s.spatial_stride == 1 && s.channel_stride >= s.spatial && s.batch_stride >= 0,
          "a channels-first student needs spatial_stride 1 and channel_stride >= spatial");
  }
}
}  // namespace

void validate(const ProjectedFeatureMseArgs& a) {
  validate_shape(a.shape);
  check(a.shape.batch == 0 || (a.teacher && a.projection), "teacher and projection must not be null");
  check(a.loss != nullptr || (a.elementwise_loss && a.shape.batch == 0), "loss must not be null");
  check(a.shape.is_double || a.teacher_dtype != DType::Float64,
        "a float64 teacher needs a float64 student and weight (is_double)");
  check(std::isfinite(a.scale), "scale must be finite");
}

void validate(const ProjectionBackwardArgs& a) {
  validate_shape(a.shape);
  check(a.shape.batch == 0 || a.grad_projection, "grad_projection must not be null");
}

void validate_labels_on_host(const SoftTargetArgs& a) {
  if (!a.labels) return;
  for (std::int64_t r = 0; r < a.rows; ++r) {
    const std::int64_t y = a.labels[r];
    if (y == a.ignore_index || (y >= 0 && y < a.cols)) continue;  // the message is built only for a bad label
    check(false, "labels: label " + std::to_string(y) + " of row " + std::to_string(r) + " is outside [0, " +
                     std::to_string(a.cols) + ") and is not ignore_index (" + std::to_string(a.ignore_index) + ")");
  }
}

}  // namespace fusedkd::detail
