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

// 2 MiB: one huge page. Smaller outputs stay with LibTorch's allocator (glibc's heap). This was
// 32 MiB, glibc's largest mmap threshold, on the belief that glibc's heap serves a training loop's
// smaller outputs without faults; measured 2026-12-02 (fwd+bwd, 2 threads, alternating runs of
// both builds), it did not: at 8192 x 1000 the calls faulted 0-1067 times each as glibc trimmed
// and regrew its heap, and from this allocator and its cache none did and every op got faster
// (float32 kd_loss 6.4-6.7 -> 5.5 ms, softmax_t 8.1-8.2 -> 6.4-6.7 ms, log_softmax_t 9.0-9.2 ->
// 6.7-6.8 ms; bfloat16 log_softmax_t 7.6 -> 6.4-6.5 ms; feature_mse at 128 x 256 x 14 x 14
// 3.1-3.3 -> 2.0-2.1 ms; float32 kd_loss at 65536 x 10 (2.6 MB) 1.85-1.93 -> 1.68-1.81 ms).
constexpr std::size_t kHugePageThreshold = std::size_t{2} << 20;

}  // namespace fusedkd::torch_ext
