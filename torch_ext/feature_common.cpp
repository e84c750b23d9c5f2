#include "feature_common.h"

#include "outputs.h"

#include <cmath>

namespace fusedkd::torch_ext {

void check_features(const char* op, const char* name, const at::Tensor& x, int64_t min_dim) {
  check_float_tensor(op, name, x);
  TORCH_CHECK(x.dim() >= min_dim, op, ": ", name, " must have at least ", min_dim, " dims, got shape ", x.sizes());
}

int64_t spatial_size(const at::Tensor& x) {
  int64_t size = 1;
  for (int64_t d = 2; d < x.dim(); ++d) size *= x.size(d);
  return size;
}

std::vector<int64_t> layout_strides(at::IntArrayRef sizes, bool channels_last) {
  std::vector<int64_t> strides(sizes.size());
  int64_t next = channels_last ? sizes[1] : 1;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= (channels_last ? 2 : 0); --d) {
    strides[d] = next;
    next *= sizes[d] > 1 ? sizes[d] : 1;
  }
  if (channels_last) {
    strides[1] = 1;
    strides[0] = next;
  }
  return strides;
}

bool has_layout(const at::Tensor& x, bool channels_last) {
  const std::vector<int64_t> expected = layout_strides(x.sizes(), channels_last);
  for (int64_t d = 0; d < x.dim(); ++d)
    if (x.size(d) > 1 && x.stride(d) != expected[d]) return false;
  return true;
}

at::Tensor to_layout(const at::Tensor& x, bool channels_last, at::ScalarType dtype) {
  if (x.scalar_type() == dtype && has_layout(x, channels_last)) return x;
  return empty_strided_output(x.sizes(), layout_strides(x.sizes(), channels_last), x.options().dtype(dtype)).copy_(x);
}

at::Tensor empty_layout(at::IntArrayRef sizes, bool channels_last, const at::TensorOptions& options) {
  return empty_strided_output(sizes, layout_strides(sizes, channels_last), options);
}

bool prefers_channels_last(const at::Tensor& x) {
  return x.dim() >= 3 && x.size(1) > 1 && !has_layout(x, false) && has_layout(x, true);
}

at::Tensor maybe_empty(bool wanted, const std::function<at::Tensor()>& make, const at::Tensor& like) {
  return wanted ? make() : at::empty({0}, like.options());
}

double reduction_factor(int64_t reduction, double elements, double batch) {
  switch (static_cast<Reduction>(reduction)) {
    case Reduction::None:
    case Reduction::Sum: return 1.0;
    case Reduction::Mean: return elements > 0 ? 1.0 / elements : std::nan("");
    case Reduction::BatchMean: return batch > 0 ? 1.0 / batch : std::nan("");
  }
  TORCH_CHECK(false, "fusedkd: unknown reduction code ", reduction);
}

at::Tensor meta_empty(bool wanted, const at::Tensor& like, const at::TensorOptions& options) {
  return wanted ? at::empty_like(like, options) : at::empty({0}, options);
}

}  // namespace fusedkd::torch_ext
