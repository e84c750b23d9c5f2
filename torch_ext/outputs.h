// Fresh outputs of the ops (results and gradient buffers). Large CPU ones are placed on
// transparent huge pages: a fresh [R x V] buffer is otherwise filled page by page on first touch,
// a fault and a zeroing per 4 KiB, which cost more than the kernel that writes it (docs/benchmarks.md:
// writing a fresh 0.5 GB float32 tensor took 95 ms with 4 KiB pages, 30 ms with 2 MiB ones, on
// this project's VM). FUSEDKD_CPU_HUGE_PAGES=0 in the environment turns this off (read once).
// Freed blocks are kept for the next output of the same size (up to FUSEDKD_CPU_OUTPUT_CACHE_MB,
// 1024 by default, 0 for none; read once): a training step's gradient buffer then lands in the
// previous step's memory, already faulted in, instead of fresh pages that the kernel zeroes.
#pragma once

#include <ATen/ATen.h>

namespace fusedkd::torch_ext {

// at::empty(sizes, options) (contiguous) and at::empty_strided(sizes, strides, options), but from
// the huge-page allocator for a CPU tensor of at least kHugePageThreshold bytes. The tensors are
// ordinary resizable CPU tensors.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);
at::Tensor empty_strided_output(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options);

// x in dtype `type`: x itself when it already is, else a converted copy: from empty_output when x
// is a contiguous plain tensor, so that a large conversion made at every call (a float16 input
// read as float32 for its gradient, the float32 gradient cast back) is not faulted in page by
// page; else Tensor::to (which keeps the layout, and dispatches a traced or wrapped tensor).
at::Tensor converted_output(const at::Tensor& x, at::ScalarType type);

// Frees every block the output cache holds; returns their bytes (fusedkd::release_cpu_output_cache).
std::size_t release_cpu_output_cache();

// 32 MiB: glibc's largest mmap threshold. Smaller blocks come from its heap, which a training loop
// reuses step after step with no fault at all (measured: a fresh 33 MB float32 gradient from here
// made kl_div at [8192 x 1000] 1.2 ms slower than LibTorch's allocator); larger ones glibc always
// maps afresh, faulted anew on every call, hence the huge pages and the cache of freed blocks.
constexpr std::size_t kHugePageThreshold = std::size_t{32} << 20;

}  // namespace fusedkd::torch_ext
