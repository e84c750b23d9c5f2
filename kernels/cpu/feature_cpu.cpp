// CPU feature-map kernels: feature_mse, attention_transfer and the
// normalised-row loss that attention_transfer and similarity_preserving share. Compiled once per
// instruction set, like the other kernel files. Totals are sums of per-chunk (or per-row)
// partials taken in a fixed order, so they do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cpu_kernels.h"
#include "row_buffers.h"
#include "fusedkd/feature_math.h"
#include "../workspace.h"

namespace fusedkd::cpu::FUSEDKD_CPU_ISA {
namespace {

// Elements per task of feature_mse; the chunking also fixes the summation order.
constexpr std::int64_t kChunk = kTaskElements;

// One chunk straight from the arrays (no bias): the sum (or the elementwise loss), then the
// gradients (stored as GS, GT), reading the chunk again while it is in cache. `gs` may be `s`
// itself (in place).
template <typename TS, typename TT, typename GS, typename GT, typename Acc>
double mse_chunk(const TS* s, const TT* t, std::int64_t n, Acc scale, Acc* loss, GS* gs, GT* gt) {
  const auto element = [&](std::int64_t i) {
    return mse_element(static_cast<Acc>(load_as_acc(s[i])), static_cast<Acc>(load_as_acc(t[i])), scale);
  };
  double sum = 0;  // in blocks of kSumBlock with a double total (row_buffers.h)
  if (loss) {
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) loss[i] = element(i).loss;
  } else {
    for (std::int64_t i0 = 0; i0 < n; i0 += kSumBlock) {
      const std::int64_t i1 = i0 + kSumBlock < n ? i0 + kSumBlock : n;
      Acc block = 0;
#pragma omp simd reduction(+ : block)
      for (std::int64_t i = i0; i < i1; ++i) block += element(i).squared;
      sum += block;
    }
  }
  if (gt) {  // before gs, which may overwrite s
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) gt[i] = StoreFromAcc<GT>::apply(static_cast<acc_t<GT>>(-element(i).grad));
  }
  if (gs) {
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) gs[i] = StoreFromAcc<GS>::apply(static_cast<acc_t<GS>>(element(i).grad));
  }
  return sum;
}

// The same through scratch rows, converted once, the student's gradient in place of its values:
// with a per-channel bias on the student (the projection), or for float16 where the instruction
// set does not convert it (kReadInPlace: each read of the chunk would convert it again).
template <typename Acc>
double mse_chunk_converted(const FeatureMseArgs& a, std::int64_t first, std::int64_t n, Acc* xs, Acc* xt) {
  load_row(a.student, a.student_dtype, first, n, xs);
  load_row(a.teacher, a.teacher_dtype, first, n, xt);
  if (a.bias) {
    const Acc* bias = static_cast<const Acc*>(a.bias);
    for (std::int64_t i = 0; i < n; ++i) xs[i] += bias[channel_of(first + i, a.bias_inner, a.bias_channels)];
  }
  Acc* loss = a.elementwise_loss ? static_cast<Acc*>(a.loss) + first : nullptr;
  const bool gradient = a.grad_student || a.grad_teacher;
  const double sum =
      mse_chunk<Acc, Acc, Acc, Acc, Acc>(xs, xt, n, static_cast<Acc>(a.scale), loss, gradient ? xs : nullptr, nullptr);
  const bool wide = a.float16_gradients_in_float32;
  if (a.grad_teacher) {
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) xt[i] = -xs[i];
    store_row(xt, n, a.grad_teacher, gradient_dtype(a.teacher_dtype, wide), first);
  }
  if (a.grad_student) store_row(xs, n, a.grad_student, gradient_dtype(a.student_dtype, wide), first);
  return sum;
}

template <typename Acc>
void run_feature_mse(const FeatureMseArgs& a, const CpuExecutor& executor) {
  const std::int64_t chunks = task_count(a.numel);
  double* partials = static_cast<double*>(a.workspace);
  with_storage_type(a.student_dtype, [&](auto s_tag) {
    with_storage_type(a.teacher_dtype, [&](auto t_tag) {
      using TS = decltype(s_tag);
      using TT = decltype(t_tag);
      const bool converted = a.bias || !kReadInPlace<TS> || !kReadInPlace<TT>;
      with_gradient_type<TS>(a.float16_gradients_in_float32, [&](auto gs_tag) {
        with_gradient_type<TT>(a.float16_gradients_in_float32, [&](auto gt_tag) {
          using GS = decltype(gs_tag);
          using GT = decltype(gt_tag);
          executor.run(chunks, 1, [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t chunk = begin; chunk < end; ++chunk) {
              const std::int64_t first = chunk * kChunk;
              const std::int64_t n = first + kChunk < a.numel ? kChunk : a.numel - first;
              double sum;
              if (converted) {
                sum = mse_chunk_converted<Acc>(a, first, n, scratch_row<Acc>(kChunk, 0), scratch_row<Acc>(kChunk, 1));
              } else {
                sum = mse_chunk<TS, TT, GS, GT, Acc>(
                    static_cast<const TS*>(a.student) + first, static_cast<const TT*>(a.teacher) + first, n,
                    static_cast<Acc>(a.scale), a.elementwise_loss ? static_cast<Acc*>(a.loss) + first : nullptr,
                    a.grad_student ? static_cast<GS*>(a.grad_student) + first : nullptr,
                    a.grad_teacher ? static_cast<GT*>(a.grad_teacher) + first : nullptr);
              }
              if (!a.elementwise_loss) partials[chunk] = sum;
            }
          });
        });
      });
    });
  });
  if (a.elementwise_loss) return;
  double total = 0;
  for (std::int64_t chunk = 0; chunk < chunks; ++chunk) total += partials[chunk];
  *static_cast<Acc*>(a.loss) = static_cast<Acc>(total * a.scale);
}

// ---------------------------------------------------------------- attention transfer

// a[k] = mean_c |x[c, k]|^p for one sample (`x` points at its first element).
template <PowerKind K, typename T, typename Acc>
void attention_map(const T* x, std::int64_t channels, std::int64_t spatial, bool channels_last, Acc p,
                   Acc* __restrict a, Acc* __restrict scratch) {
  const Acc inv_c = Acc(1) / static_cast<Acc>(channels);
  if (!channels_last) {
    // Blocks of positions whose sums stay in registers over all the channels: summing each channel
    // row into a[] in memory ran at half the speed of reading the sample (measured,
    // docs/architecture.md).
    constexpr std::int64_t kBlock = 4 * 64 / static_cast<std::int64_t>(sizeof(Acc));  // 4 AVX-512 vectors
    std::int64_t k0 = 0;
    for (; k0 + kBlock <= spatial; k0 += kBlock) {
      Acc sums[kBlock] = {};
      for (std::int64_t c = 0; c < channels; ++c) {
        const T* row = x + c * spatial + k0;
#pragma omp simd
        for (std::int64_t j = 0; j < kBlock; ++j) sums[j] += abs_power<K>(static_cast<Acc>(load_as_acc(row[j])), p);
      }
#pragma omp simd
      for (std::int64_t j = 0; j < kBlock; ++j) a[k0 + j] = sums[j] * inv_c;
    }
    if (k0 < spatial) {
      const std::int64_t rest = spatial - k0;
      Acc sums[kBlock] = {};
      for (std::int64_t c = 0; c < channels; ++c) {
        const T* row = x + c * spatial + k0;
#pragma omp simd
        for (std::int64_t j = 0; j < rest; ++j) sums[j] += abs_power<K>(static_cast<Acc>(load_as_acc(row[j])), p);
      }
      for (std::int64_t j = 0; j < rest; ++j) a[k0 + j] = sums[j] * inv_c;
    }
  } else {
    for (std::int64_t k = 0; k < spatial; ++k) {
      const Acc* __restrict row = input_row(x + k * channels, channels, scratch);
      Acc sum = 0;
#pragma omp simd reduction(+ : sum)
      for (std::int64_t c = 0; c < channels; ++c) sum += abs_power<K>(row[c], p);
      a[k] = sum * inv_c;
    }
  }
}

// grad[c, k] = d[k] * (p / C) * d|x|^p/dx for one sample; rows stored in the accumulation type
// are read, and their gradients written, where they lie.
template <PowerKind K, typename T, typename G, typename Acc>
void attention_gradient(const T* x, std::int64_t channels, std::int64_t spatial, bool channels_last, Acc p,
                        const Acc* __restrict d, G* grad, Acc* __restrict scratch) {
  const Acc inv_c = Acc(1) / static_cast<Acc>(channels);
  const std::int64_t rows = channels_last ? spatial : channels;
  const std::int64_t cols = channels_last ? channels : spatial;
  for (std::int64_t i = 0; i < rows; ++i) {
    const Acc* row = input_row(x + i * cols, cols, scratch);
    Acc* out = output_row(grad + i * cols, scratch);  // scratch: element j is read before it is written
    if (!channels_last) {
#pragma omp simd
      for (std::int64_t k = 0; k < cols; ++k) out[k] = d[k] * inv_c * abs_power_derivative<K>(row[k], p);
    } else {
      const Acc factor = d[i] * inv_c;
#pragma omp simd
      for (std::int64_t c = 0; c < cols; ++c) out[c] = factor * abs_power_derivative<K>(row[c], p);
    }
    output_row_done(out, cols, grad + i * cols);
  }
}

template <typename Acc>
Acc normalized_row(const Acc* __restrict a_s, const Acc* __restrict a_t, std::int64_t cols, Acc scale,
                   Acc* __restrict d_s, Acc* __restrict d_t) {
  Acc squares_s = 0, squares_t = 0;
#pragma omp simd reduction(+ : squares_s, squares_t)
  for (std::int64_t k = 0; k < cols; ++k) {
    squares_s += a_s[k] * a_s[k];
    squares_t += a_t[k] * a_t[k];
  }
  const RowNorm<Acc> norm_s = row_norm(squares_s);
  const RowNorm<Acc> norm_t = row_norm(squares_t);
  const Acc inv_s = Acc(1) / norm_s.divisor, inv_t = Acc(1) / norm_t.divisor;
  Acc loss = 0, dot_s = 0, dot_t = 0;  // dot_x = sum A_x e with e = dL/dA_s
  const Acc two_scale = Acc(2) * scale;
#pragma omp simd reduction(+ : loss, dot_s, dot_t)
  for (std::int64_t k = 0; k < cols; ++k) {
    const Acc as = a_s[k] * inv_s, at = a_t[k] * inv_t;
    const Acc diff = as - at;
    loss += diff * diff;
    dot_s += as * two_scale * diff;
    dot_t += at * two_scale * diff;
  }
  if (d_s) {
#pragma omp simd
    for (std::int64_t k = 0; k < cols; ++k) {
      const Acc e = two_scale * (a_s[k] * inv_s - a_t[k] * inv_t);
      d_s[k] = normalize_backward(e, a_s[k] * inv_s, dot_s, norm_s, inv_s);
    }
  }
  if (d_t) {
#pragma omp simd
    for (std::int64_t k = 0; k < cols; ++k) {
      const Acc e = two_scale * (a_t[k] * inv_t - a_s[k] * inv_s);  // dL/dA_t = -dL/dA_s
      d_t[k] = normalize_backward(e, a_t[k] * inv_t, -dot_t, norm_t, inv_t);
    }
  }
  return scale * loss;
}

template <typename Acc>
void run_normalized_rows(const NormalizedRowsArgs& a, const CpuExecutor& executor) {
  const Acc* a_s = static_cast<const Acc*>(a.a_s);
  const Acc* a_t = static_cast<const Acc*>(a.a_t);
  Acc* d_s = static_cast<Acc*>(a.d_s);
  Acc* d_t = static_cast<Acc*>(a.d_t);
  Acc* row_loss = static_cast<Acc*>(a.row_loss);
  executor.run(a.rows, rows_per_task(a.cols), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) {
      const std::int64_t offset = r * a.cols;
      row_loss[r] = normalized_row(a_s + offset, a_t + offset, a.cols, static_cast<Acc>(a.scale),
                                   d_s ? d_s + offset : nullptr, d_t ? d_t + offset : nullptr);
    }
  });
}

// Sample n of one side (student or teacher): its map into a, or its gradient from d into grad.
template <typename Acc>
void attention_sample(const FeatureMap& map, std::int64_t n, std::int64_t spatial, double p, Acc* a, const Acc* d,
                      void* grad, bool float16_gradients_in_float32, Acc* scratch) {
  const std::int64_t per_sample = map.channels * spatial;
  with_storage_type(map.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_power_kind(p, [&](auto kind) {
      constexpr PowerKind K = decltype(kind)::value;
      const T* x = static_cast<const T*>(map.data) + n * per_sample;
      if (d) {
        with_gradient_type<T>(float16_gradients_in_float32, [&](auto g_tag) {
          using G = decltype(g_tag);
          attention_gradient<K>(x, map.channels, spatial, map.channels_last, static_cast<Acc>(p), d,
                                static_cast<G*>(grad) + n * per_sample, scratch);
        });
      } else {
        attention_map<K>(x, map.channels, spatial, map.channels_last, static_cast<Acc>(p), a, scratch);
      }
    });
  });
}

// One sample at a time, start to end: both maps, the normalized row (loss, d_s, d_t), then the
// gradients, while the sample's features are still in cache (the second read of the student's
// features hits L2 instead of memory: 3X of traffic instead of 4X).
template <typename Acc>
void run_attention_transfer(const AttentionTransferArgs& a, const CpuExecutor& executor) {
  const detail::NormalizedRowsWorkspace<Acc> workspace(a.workspace, a.batch, a.spatial);
  Acc* row_loss = a.per_row_loss ? static_cast<Acc*>(a.loss) : workspace.row_loss;
  const std::int64_t spatial = a.spatial;
  const std::int64_t channels = std::max(a.student.channels, a.teacher.channels);
  const Acc scale = static_cast<Acc>(a.scale);
  executor.run(a.batch, rows_per_task(channels * spatial), [&](std::int64_t begin, std::int64_t end) {
    Acc* scratch = scratch_row<Acc>(std::max(channels, spatial), 0);  // a channel row or a position's channels
    for (std::int64_t n = begin; n < end; ++n) {
      const std::int64_t offset = n * spatial;
      Acc* a_s = workspace.a_s + offset;
      Acc* a_t = workspace.a_t + offset;
      Acc* d_s = a.grad_student ? workspace.d_s + offset : nullptr;
      Acc* d_t = a.grad_teacher ? workspace.d_t + offset : nullptr;
      attention_sample<Acc>(a.student, n, spatial, a.p, a_s, nullptr, nullptr, false, scratch);
      attention_sample<Acc>(a.teacher, n, spatial, a.p, a_t, nullptr, nullptr, false, scratch);
      row_loss[n] = normalized_row(a_s, a_t, spatial, scale, d_s, d_t);
      const bool wide = a.float16_gradients_in_float32;
      if (d_s) attention_sample<Acc>(a.student, n, spatial, a.p, nullptr, d_s, a.grad_student, wide, scratch);
      if (d_t) attention_sample<Acc>(a.teacher, n, spatial, a.p, nullptr, d_t, a.grad_teacher, wide, scratch);
    }
  });
  if (!a.per_row_loss) {
    Acc total = 0;  // in row order
    for (std::int64_t n = 0; n < a.batch; ++n) total += row_loss[n];
    *static_cast<Acc*>(a.loss) = total;
  }
}

}  // namespace

void feature_mse(const FeatureMseArgs& args, const CpuExecutor& executor) {
  if (feature_mse_uses_double(args)) run_feature_mse<double>(args, executor);
  else run_feature_mse<float>(args, executor);
}

void attention_transfer(const AttentionTransferArgs& args, const CpuExecutor& executor) {
  if (attention_transfer_uses_double(args)) run_attention_transfer<double>(args, executor);
  else run_attention_transfer<float>(args, executor);
}

void normalized_rows(const NormalizedRowsArgs& args, const CpuExecutor& executor) {
  if (args.is_double) run_normalized_rows<double>(args, executor);
  else run_normalized_rows<float>(args, executor);
}

}  // namespace fusedkd::cpu::FUSEDKD_CPU_ISA
