#include "common.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

namespace fusedkd::torch_ext {

void check_float_tensor(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK(x.defined(), op, ": ", name, " is an undefined tensor");
  const at::ScalarType type = x.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16,
              op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", type);
}

void check_logits(const char* op, const char* name, const at::Tensor& x) {
  check_float_tensor(op, name, x);
  TORCH_CHECK(x.dim() >= 1, op, ": ", name, " must have at least 1 dim ([*, V]), got a 0-dim tensor");
  TORCH_CHECK(x.size(-1) >= 1, op, ": ", name, " must have a last dim (V) of at least 1, got shape ",
              x.sizes());
  TORCH_CHECK(x.size(-1) <= std::numeric_limits<std::int32_t>::max(), op, ": ", name,
              "'s last dim (V) must be below 2^31, got ", x.size(-1));
}

void check_temperature(const char* op, double temperature) {
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, op,
              ": temperature must be finite and > 0, got ", temperature);
}

void check_same_device(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                       const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

DType kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "fusedkd: unsupported dtype ", type);
  }
}

at::ScalarType scalar_type(DType dtype) {
  switch (dtype) {
    case DType::Float32: return at::kFloat;
    case DType::Float64: return at::kDouble;
    case DType::Float16: return at::kHalf;
    case DType::BFloat16: return at::kBFloat16;
  }
  TORCH_CHECK(false, "fusedkd: unknown kernel dtype");
}

at::ScalarType loss_scalar_type(std::initializer_list<at::ScalarType> inputs) {
  DType loss = DType::Float32;
  for (const at::ScalarType type : inputs) loss = loss_dtype(loss, kernel_dtype(type));
  return scalar_type(loss);
}

at::ScalarType gradient_buffer_type(at::ScalarType input) { return input == at::kHalf ? at::kFloat : input; }

at::ScalarType kernel_input_type(const at::Tensor& x, bool gradient_wanted) {
  return gradient_wanted ? gradient_buffer_type(x.scalar_type()) : x.scalar_type();
}

at::TensorOptions gradient_buffer_options(const at::Tensor& x) {
  return x.options().dtype(gradient_buffer_type(x.scalar_type()));
}

RowView row_view(const at::Tensor& x) {
  const std::int64_t cols = x.size(-1);
  const std::int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  bool usable = cols == 1 || x.stride(-1) == 1;
  std::int64_t row_stride = -1;
  std::int64_t next_stride = 0;  // the stride dim d must have to continue the row sequence
  for (std::int64_t d = x.dim() - 2; d >= 0 && usable; --d) {
    if (x.size(d) == 1) continue;
    if (row_stride < 0) {
      row_stride = x.stride(d);
    } else if (x.stride(d) != next_stride) {
      usable = false;
    }
    next_stride = x.stride(d) * x.size(d);
  }
  if (!usable) return {x.contiguous(), rows, cols, cols};
  return {x, rows, cols, row_stride < 0 ? cols : row_stride};
}

Reduction parse_reduction(const char* op, c10::string_view reduction, bool allow_batchmean) {
  if (reduction == "none") return Reduction::None;
  if (reduction == "sum") return Reduction::Sum;
  if (reduction == "mean") return Reduction::Mean;
  if (allow_batchmean && reduction == "batchmean") return Reduction::BatchMean;
  TORCH_CHECK(false, op, ": reduction must be one of \"none\", \"sum\", \"mean\"",
              allow_batchmean ? ", \"batchmean\"" : "", ", got \"", std::string(reduction), "\"");
}

const CpuExecutor& torch_cpu_executor() {
  static const CpuExecutor executor{[](std::int64_t n, std::int64_t grain, const CpuExecutor::Body& body) {
    at::parallel_for(0, n, grain, [&](std::int64_t begin, std::int64_t end) { body(begin, end); });
  }};
  return executor;
}

}  // namespace fusedkd::torch_ext
