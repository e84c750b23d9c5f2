// What the feature-map ops share: argument checks, the dense layouts they hand the kernels
// (channels-first or channels-last [N, C, *spatial]), and the reductions' factors.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "common.h"

namespace fusedkd::torch_ext {

// `name` is a defined floating tensor with at least `min_dim` dims.
void check_features(const char* op, const char* name, const at::Tensor& x, int64_t min_dim);

// The product of the dims after the first two ([N, C, *spatial]).
int64_t spatial_size(const at::Tensor& x);

// Strides of a dense [N, C, *spatial] tensor: channels-first (contiguous) or channels-last.
std::vector<int64_t> layout_strides(at::IntArrayRef sizes, bool channels_last);
bool has_layout(const at::Tensor& x, bool channels_last);
// x as a dense tensor of the given layout and dtype (x itself when it already is one).
at::Tensor to_layout(const at::Tensor& x, bool channels_last, at::ScalarType dtype);
at::Tensor empty_layout(at::IntArrayRef sizes, bool channels_last, const at::TensorOptions& options);
// Channels-last when x is stored so (and more than one channel makes it differ), else channels-first.
bool prefers_channels_last(const at::Tensor& x);

// make() when wanted, else an empty placeholder with like's options.
at::Tensor maybe_empty(bool wanted, const std::function<at::Tensor()>& make, const at::Tensor& like);

// The factor a reduction puts on the summed loss; "mean" and "batchmean" of nothing are NaN (as
// torch's mean of an empty tensor).
double reduction_factor(int64_t reduction, double elements, double batch);

// Runs the kernel with the reduction's factor in `scale` (1 when the factor is NaN), then makes
// such a loss NaN.
template <typename Launch>
void launch_reduced(const char* op, double factor, at::Tensor& loss, double& scale, const Launch& launch) {
  scale = std::isnan(factor) ? 1.0 : factor;
  launch_kernel(op, launch);
  if (std::isnan(factor)) loss.fill_(std::nan(""));
}

// Meta kernels: an empty tensor like `like` when wanted, else an empty placeholder.
at::Tensor meta_empty(bool wanted, const at::Tensor& like, const at::TensorOptions& options);

}  // namespace fusedkd::torch_ext
