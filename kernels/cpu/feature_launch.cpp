// CPU launchers of the feature-map losses: argument checks, the per-instruction-set kernels, and
// the GEMMs of projected_feature_mse and similarity_preserving on OpenBLAS's CBLAS.
#include <cblas.h>
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#include "../projection.h"
#include "../validate.h"
#include "../workspace.h"

namespace fusedkd {
namespace {

// OpenBLAS, loaded on first use. OpenBLAS picks its kernels when it loads, from the CPU model, and
// Debian 12's 0.3.21 does not know recent Xeons: it falls back to its SSE3 ("Prescott") kernels,
// 4x slower than its AVX-512 ones on this project's VM (docs/benchmarks.md). Loading it here lets
// us name the kernels our own CPU detection supports (OPENBLAS_CORETYPE, when the user has not
// set it) before it chooses.
struct Blas {
  decltype(&cblas_sgemm) sgemm;
  decltype(&cblas_dgemm) dgemm;
  decltype(&cblas_ssyrk) ssyrk;
  decltype(&cblas_dsyrk) dsyrk;
};

const Blas& blas() {
  static const Blas loaded = [] {
    if (!std::getenv("OPENBLAS_CORETYPE")) {
      switch (cpu::selected_isa()) {
        case cpu::Isa::Avx512: setenv("OPENBLAS_CORETYPE", "SkylakeX", 0); break;
        case cpu::Isa::Avx2: setenv("OPENBLAS_CORETYPE", "Haswell", 0); break;
        case cpu::Isa::Baseline: break;
      }
    }
    void* library = dlopen(FUSEDKD_CBLAS_LIBRARY_PATH, RTLD_NOW | RTLD_LOCAL);
    if (!library) library = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!library)
      throw std::runtime_error(std::string("fusedkd: cannot load OpenBLAS (" FUSEDKD_CBLAS_LIBRARY_PATH
                                           " or libopenblas.so.0): ") + dlerror());
    Blas b{reinterpret_cast<decltype(&cblas_sgemm)>(dlsym(library, "cblas_sgemm")),
           reinterpret_cast<decltype(&cblas_dgemm)>(dlsym(library, "cblas_dgemm")),
           reinterpret_cast<decltype(&cblas_ssyrk)>(dlsym(library, "cblas_ssyrk")),
           reinterpret_cast<decltype(&cblas_dsyrk)>(dlsym(library, "cblas_dsyrk"))};
    if (!b.sgemm || !b.dgemm || !b.ssyrk || !b.dsyrk)
      throw std::runtime_error("fusedkd: OpenBLAS lacks cblas_sgemm / cblas_dgemm / cblas_ssyrk / cblas_dsyrk");
    return b;
  }();
  return loaded;
}

CBLAS_TRANSPOSE transpose(bool t) { return t ? CblasTrans : CblasNoTrans; }

// Row-major C = alpha op(A) op(B) + beta C.
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, double beta, float* c, std::int64_t ldc) {
  blas().sgemm(CblasRowMajor, transpose(trans_a), transpose(trans_b), detail::blas_int(m, "m"),
               detail::blas_int(n, "n"), detail::blas_int(k, "k"), static_cast<float>(alpha), a,
               detail::blas_int(lda, "lda"), b, detail::blas_int(ldb, "ldb"), static_cast<float>(beta), c,
               detail::blas_int(ldc, "ldc"));
}
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a,
          std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c, std::int64_t ldc) {
  blas().dgemm(CblasRowMajor, transpose(trans_a), transpose(trans_b), detail::blas_int(m, "m"),
               detail::blas_int(n, "n"), detail::blas_int(k, "k"), alpha, a, detail::blas_int(lda, "lda"), b,
               detail::blas_int(ldb, "ldb"), beta, c, detail::blas_int(ldc, "ldc"));
}

// The Gram matrix G[n, n] = F F^T of F[n, k] (rows `ld` apart): SYRK computes the upper triangle
// (half a GEMM's work), which is then mirrored.
template <typename Acc>
void gram(std::int64_t n, std::int64_t k, const Acc* f, std::int64_t ld, Acc* g) {
  const int ni = detail::blas_int(n, "n"), ki = detail::blas_int(k, "k"), ldi = detail::blas_int(ld, "lda");
  if constexpr (std::is_same_v<Acc, double>) {
    blas().dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, ni, ki, 1.0, f, ldi, 0.0, g, ni);
  } else {
    blas().ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, ni, ki, 1.0f, f, ldi, 0.0f, g, ni);
  }
  for (std::int64_t r = 1; r < n; ++r)
    for (std::int64_t c = 0; c < r; ++c) g[r * n + c] = g[c * n + r];
}

void zero_loss(void* loss, bool is_double) {
  if (is_double) *static_cast<double*>(loss) = 0.0;
  else *static_cast<float*>(loss) = 0.0f;
}

template <typename Acc>
void similarity_preserving_typed(const SimilarityPreservingArgs& a, const CpuExecutor& executor) {
  const std::int64_t n = a.rows;
  const Acc* fs = static_cast<const Acc*>(a.student);
  const Acc* ft = static_cast<const Acc*>(a.teacher);
  const detail::NormalizedRowsWorkspace<Acc> workspace(a.workspace, n, n);
  Acc *gram_s = workspace.a_s, *gram_t = workspace.a_t, *d_s = workspace.d_s, *d_t = workspace.d_t;
  Acc* row_loss = workspace.row_loss;
  gram(n, a.student_cols, fs, a.student_row_stride, gram_s);
  gram(n, a.teacher_cols, ft, a.teacher_row_stride, gram_t);
  cpu::NormalizedRowsArgs rows;
  rows.a_s = gram_s;
  rows.a_t = gram_t;
  rows.is_double = std::is_same_v<Acc, double>;
  rows.rows = n;
  rows.cols = n;
  rows.scale = 1.0 / (static_cast<double>(n) * static_cast<double>(n));
  rows.row_loss = row_loss;
  rows.d_s = a.grad_student ? d_s : nullptr;
  rows.d_t = a.grad_teacher ? d_t : nullptr;
  [&] { FUSEDKD_CPU_DISPATCH(normalized_rows, rows, executor) }();
  Acc total = 0;  // in row order
  for (std::int64_t r = 0; r < n; ++r) total += row_loss[r];
  *static_cast<Acc*>(a.loss) = total;
  // G = F F^T, so dL/dF = (D + D^T) F for D = dL/dG: D + D^T formed in place (D is not needed
  // after), then one GEMM.
  const auto feature_gradient = [&](Acc* d, const Acc* f, std::int64_t cols, std::int64_t ld, void* grad) {
    for (std::int64_t r = 0; r < n; ++r)
      for (std::int64_t c = r; c < n; ++c) d[r * n + c] = d[c * n + r] = d[r * n + c] + d[c * n + r];
    gemm(false, false, n, cols, n, 1.0, d, n, f, ld, 0.0, static_cast<Acc*>(grad), cols);
  };
  if (a.grad_student) feature_gradient(d_s, fs, a.student_cols, a.student_row_stride, a.grad_student);
  if (a.grad_teacher) feature_gradient(d_t, ft, a.teacher_cols, a.teacher_row_stride, a.grad_teacher);
}

// Channels-first maps with a small spatial size make one GEMM per sample only S columns wide,
// where OpenBLAS runs far below its peak (and its threads mostly wait): samples go in groups of
// `group` instead, repacked into a [C, group * S] scratch matrix while they are in cache, so each
// GEMM is at least kGroupColumns wide. Large S keeps one GEMM per sample, with no copies.
constexpr std::int64_t kGroupColumns = 512;

std::int64_t samples_per_gemm(const ProjectionShape& s) {
  if (s.channels_last || s.spatial >= kGroupColumns) return 1;
  const std::int64_t group = (kGroupColumns + s.spatial - 1) / s.spatial;
  return group < s.batch ? group : (s.batch > 0 ? s.batch : 1);
}

// packed[c, i * S + k] = src[(b0 + i) * batch_stride + c * channel_stride + k] for `count` samples.
template <typename Acc>
void pack_samples(const Acc* src, std::int64_t b0, std::int64_t count, std::int64_t channels, std::int64_t spatial,
                  std::int64_t batch_stride, std::int64_t channel_stride, Acc* packed) {
  for (std::int64_t c = 0; c < channels; ++c)
    for (std::int64_t i = 0; i < count; ++i)
      std::memcpy(packed + (c * count + i) * spatial, src + (b0 + i) * batch_stride + c * channel_stride,
                  sizeof(Acc) * spatial);
}

// The inverse, into a contiguous [N, C, S] array.
template <typename Acc>
void unpack_samples(const Acc* packed, std::int64_t b0, std::int64_t count, std::int64_t channels,
                    std::int64_t spatial, Acc* dst) {
  for (std::int64_t c = 0; c < channels; ++c)
    for (std::int64_t i = 0; i < count; ++i)
      std::memcpy(dst + ((b0 + i) * channels + c) * spatial, packed + (c * count + i) * spatial,
                  sizeof(Acc) * spatial);
}

template <typename Acc>
void project(const ProjectionShape& s, Acc* y) {
  const Acc* x = static_cast<const Acc*>(s.student);
  const Acc* w = static_cast<const Acc*>(s.weight);
  const std::int64_t cs = s.in_channels, ct = s.out_channels, sp = s.spatial;
  if (s.channels_last) {  // Y[N*S, Ct] = X[N*S, Cs] W^T
    gemm(false, true, s.batch * sp, ct, cs, 1.0, x, s.spatial_stride, w, cs, 0.0, y, ct);
    return;
  }
  const std::int64_t group = samples_per_gemm(s);
  if (group == 1) {  // Y_n[Ct, S] = W X_n[Cs, S]
    for (std::int64_t b = 0; b < s.batch; ++b)
      gemm(false, false, ct, sp, cs, 1.0, w, cs, x + b * s.batch_stride, s.channel_stride, 0.0, y + b * ct * sp, sp);
    return;
  }
  std::vector<Acc> xg(static_cast<std::size_t>(cs * group * sp)), yg(static_cast<std::size_t>(ct * group * sp));
  for (std::int64_t b0 = 0; b0 < s.batch; b0 += group) {  // Y_g[Ct, g*S] = W X_g[Cs, g*S]
    const std::int64_t count = s.batch - b0 < group ? s.batch - b0 : group;
    pack_samples(x, b0, count, cs, sp, s.batch_stride, s.channel_stride, xg.data());
    gemm(false, false, ct, count * sp, cs, 1.0, w, cs, xg.data(), count * sp, 0.0, yg.data(), count * sp);
    unpack_samples(yg.data(), b0, count, ct, sp, y);
  }
}

template <typename Acc>
void projection_backward_typed(const ProjectionBackwardArgs& a, const CpuExecutor& executor) {
  const ProjectionShape& s = a.shape;
  const Acc* x = static_cast<const Acc*>(s.student);
  const Acc* w = static_cast<const Acc*>(s.weight);
  const Acc* g = static_cast<const Acc*>(a.grad_projection);
  Acc* gx = static_cast<Acc*>(a.grad_student);
  Acc* gw = static_cast<Acc*>(a.grad_weight);
  const std::int64_t cs = s.in_channels, ct = s.out_channels, sp = s.spatial;
  const std::int64_t group = samples_per_gemm(s);
  if (s.channels_last) {
    if (gx)  // dX[N*S, Cs] = G[N*S, Ct] W
      gemm(false, false, s.batch * sp, cs, ct, 1.0, g, ct, w, cs, 0.0, gx, cs);
    if (gw)  // dW[Ct, Cs] = G^T X
      gemm(true, false, ct, cs, s.batch * sp, 1.0, g, ct, x, s.spatial_stride, 0.0, gw, cs);
  } else if (group == 1) {
    for (std::int64_t b = 0; b < s.batch; ++b) {
      const Acc* gb = g + b * ct * sp;
      if (gx)  // dX_n[Cs, S] = W^T G_n
        gemm(true, false, cs, sp, ct, 1.0, w, cs, gb, sp, 0.0, gx + b * cs * sp, sp);
      if (gw)  // dW += G_n X_n^T, batch by batch (a fixed order)
        gemm(false, true, ct, cs, sp, 1.0, gb, sp, x + b * s.batch_stride, s.channel_stride, b == 0 ? 0.0 : 1.0, gw,
             cs);
    }
  } else {
    const std::size_t n = static_cast<std::size_t>(group * sp);
    std::vector<Acc> gg(ct * n), xg(gw ? cs * n : 0), dxg(gx ? cs * n : 0);
    for (std::int64_t b0 = 0; b0 < s.batch; b0 += group) {
      const std::int64_t count = s.batch - b0 < group ? s.batch - b0 : group, cols = count * sp;
      pack_samples(g, b0, count, ct, sp, ct * sp, sp, gg.data());
      if (gx) {  // dX_g[Cs, g*S] = W^T G_g
        gemm(true, false, cs, cols, ct, 1.0, w, cs, gg.data(), cols, 0.0, dxg.data(), cols);
        unpack_samples(dxg.data(), b0, count, cs, sp, gx);
      }
      if (gw) {  // dW += G_g X_g^T, group by group (a fixed order)
        pack_samples(x, b0, count, cs, sp, s.batch_stride, s.channel_stride, xg.data());
        gemm(false, true, ct, cs, cols, 1.0, gg.data(), cols, xg.data(), cols, b0 == 0 ? 0.0 : 1.0, gw, cs);
      }
    }
  }
  if (a.grad_weight && s.batch == 0) std::memset(a.grad_weight, 0, sizeof(Acc) * ct * cs);
  if (a.grad_bias) {  // db[c] = sum over batch and space of G[., c, .]
    Acc* db = static_cast<Acc*>(a.grad_bias);
    executor.run(ct, 1, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t c = begin; c < end; ++c) {
        Acc sum = 0;
        for (std::int64_t b = 0; b < s.batch; ++b) {
          if (s.channels_last) {
            const Acc* row = g + b * sp * ct + c;
            for (std::int64_t k = 0; k < sp; ++k) sum += row[k * ct];
          } else {
            const Acc* row = g + (b * ct + c) * sp;
#pragma omp simd reduction(+ : sum)
            for (std::int64_t k = 0; k < sp; ++k) sum += row[k];
          }
        }
        db[c] = sum;
      }
    });
  }
}

}  // namespace

void feature_mse_cpu(const FeatureMseArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  if (args.numel == 0) {
    if (!args.elementwise_loss) zero_loss(args.loss, feature_mse_uses_double(args));
    return;
  }
  FUSEDKD_CPU_DISPATCH(feature_mse, args, executor)
}

void attention_transfer_cpu(const AttentionTransferArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  if (args.batch == 0) {
    if (!args.per_row_loss) zero_loss(args.loss, attention_transfer_uses_double(args));
    return;
  }
  FUSEDKD_CPU_DISPATCH(attention_transfer, args, executor)
}

void similarity_preserving_cpu(const SimilarityPreservingArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  if (args.rows == 0) return zero_loss(args.loss, args.is_double);
  if (args.is_double) similarity_preserving_typed<double>(args, executor);
  else similarity_preserving_typed<float>(args, executor);
}

void projected_feature_mse_cpu(const ProjectedFeatureMseArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  const ProjectionShape& s = args.shape;
  if (s.is_double) project(s, static_cast<double*>(args.projection));
  else project(s, static_cast<float*>(args.projection));
  feature_mse_cpu(detail::projection_error_args(args), executor);
}

void projection_backward_cpu(const ProjectionBackwardArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  if (args.shape.is_double) projection_backward_typed<double>(args, executor);
  else projection_backward_typed<float>(args, executor);
}

}  // namespace fusedkd
