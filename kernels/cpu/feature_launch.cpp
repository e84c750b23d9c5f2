// CPU launchers of the feature-map losses: argument checks, the per-instruction-set kernels, and
// the GEMMs of projected_feature_mse and similarity_preserving on OpenBLAS's CBLAS.
#include <cblas.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
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
  // OpenBLAS's threading (null where the library lacks them): its thread count, and its flavour
  // (openblas_get_parallel: 0 sequential, 1 pthreads, 2 OpenMP).
  int (*get_num_threads)();
  void (*set_num_threads)(int);
  int (*get_parallel)();
  // Whether calls from several threads at once are safe: the pthreads and OpenMP flavours; the
  // sequential one only when built with locking, which cannot be asked, so not assumed.
  bool concurrent_calls() const { return get_parallel && get_parallel() != 0; }
  // Whether the thread count is OpenBLAS's own pool's (the pthreads flavour; the OpenMP flavour's
  // is OpenMP's, and it runs one thread inside a parallel region of its own accord).
  bool own_thread_pool() const { return get_parallel && get_parallel() == 1 && get_num_threads && set_num_threads; }
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
           reinterpret_cast<decltype(&cblas_dsyrk)>(dlsym(library, "cblas_dsyrk")),
           reinterpret_cast<int (*)()>(dlsym(library, "openblas_get_num_threads")),
           reinterpret_cast<void (*)(int)>(dlsym(library, "openblas_set_num_threads")),
           reinterpret_cast<int (*)()>(dlsym(library, "openblas_get_parallel"))};
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

// The GEMMs run on the executor's threads, one single-threaded OpenBLAS call per part of the work,
// rather than OpenBLAS's own threads beside them: after each parallel region LibTorch's OpenMP
// workers spin-wait for a while (libgomp's default) and OpenBLAS's pthreads then compete with them
// for the cores. Measured on this project's 2-core VM (2026-11-30), projected_feature_mse fwd+bwd
// at 32 x 256 x 7 x 7 took 13.7 ms with OpenBLAS's threads, 6.9 ms with the OpenMP workers made
// to sleep (OMP_WAIT_POLICY=PASSIVE). The executor's threads also honour torch.set_num_threads.
// With OpenBLAS's pthreads flavour, while any op of this file runs OpenBLAS's thread count is 1
// (the first op in saves it, the last out restores it), so an application's own OpenBLAS calls
// made meanwhile from other threads of the process, on the same library, run on one thread too
// (and a count it sets meanwhile is overwritten on the way out). Without a parallel executor (no
// OpenMP, no thread pool handed in) OpenBLAS keeps its threads. A sequential OpenBLAS gets its
// calls one at a time (gemm_executor).
class BlasOnCallerThreads {
 public:
  explicit BlasOnCallerThreads(const CpuExecutor& executor)
      : active_(parallel(executor) && blas().own_thread_pool()) {
    if (!active_) return;
    std::lock_guard<std::mutex> lock(mutex());
    if (users()++ == 0) {
      saved() = blas().get_num_threads();
      blas().set_num_threads(1);
    }
  }
  ~BlasOnCallerThreads() {
    if (!active_) return;
    std::lock_guard<std::mutex> lock(mutex());
    if (--users() == 0 && saved() > 1) blas().set_num_threads(saved());
  }
  BlasOnCallerThreads(const BlasOnCallerThreads&) = delete;
  BlasOnCallerThreads& operator=(const BlasOnCallerThreads&) = delete;

 private:
  static bool parallel([[maybe_unused]] const CpuExecutor& executor) {
#if defined(FUSEDKD_HAVE_OPENMP)
    return true;
#else
    return static_cast<bool>(executor.parallel_for);
#endif
  }
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static int& users() {
    static int n = 0;
    return n;
  }
  static int& saved() {
    static int n = 0;
    return n;
  }
  bool active_;
};

// Runs every task on the calling thread, one after another.
const CpuExecutor& serial_executor() {
  static const CpuExecutor serial{[](std::int64_t n, std::int64_t, const CpuExecutor::Body& body) { body(0, n); }};
  return serial;
}

// The executor the GEMM calls of an op go through: its own, or one at a time where the library's
// calls may not overlap.
const CpuExecutor& gemm_executor(const CpuExecutor& executor) {
  return blas().concurrent_calls() ? executor : serial_executor();
}

// Work in `units` (samples, groups of samples, parts of a sum): many of them are shared out among
// the threads, each unit's GEMMs on one thread (inner = serial); a few (fewer than
// kParallelUnits) go one after another, each unit's GEMMs split over the threads (inner = the
// executor). unit(u, inner, scratch): `scratch` is the task's, kept from unit to unit (it grows
// once, not an allocation per unit). Which way depends on the shape alone, and every GEMM is cut in the same fixed parts
// either way (parallel_gemm), so the bits do not depend on the thread count.
constexpr std::int64_t kParallelUnits = 8;

template <typename Acc, typename Unit>
void for_units(const CpuExecutor& executor, std::int64_t units, const Unit& unit) {
  if (units >= kParallelUnits) {
    executor.run(units, 1, [&](std::int64_t u0, std::int64_t u1) {
      std::vector<Acc> scratch;
      for (std::int64_t u = u0; u < u1; ++u) unit(u, serial_executor(), scratch);
    });
  } else {
    std::vector<Acc> scratch;
    for (std::int64_t u = 0; u < units; ++u) unit(u, executor, scratch);
  }
}

// C[m, n] = alpha op(A) op(B) + beta C (row-major) on the executor: C's rows (or, when it has more
// columns, its columns) in ceil(len / kGemmPart) even parts, a GEMM over the whole of k each. The
// parts depend on the shape alone, not on the thread count, so neither do the bits.
constexpr std::int64_t kGemmPart = 128;

template <typename Acc>
void parallel_gemm(const CpuExecutor& executor, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
                   std::int64_t k, double alpha, const Acc* a, std::int64_t lda, const Acc* b, std::int64_t ldb,
                   double beta, Acc* c, std::int64_t ldc) {
  // On the serial executor, one call: for_units and chunked_sum pass it where the shape shares its
  // work out by units instead (gemm_executor, where OpenBLAS takes one call at a time), so whether
  // C is cut still depends on the shape (and the library) alone.
  if (&executor == &serial_executor()) {
    gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const bool by_rows = m >= n;
  const std::int64_t len = by_rows ? m : n, parts = (len + kGemmPart - 1) / kGemmPart;
  executor.run(parts, 1, [&](std::int64_t p0, std::int64_t p1) {
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t i0 = len * p / parts, count = len * (p + 1) / parts - i0;
      if (by_rows)
        gemm(trans_a, trans_b, count, n, k, alpha, trans_a ? a + i0 : a + i0 * lda, lda, b, ldb, beta, c + i0 * ldc,
             ldc);
      else
        gemm(trans_a, trans_b, m, count, k, alpha, a, lda, trans_b ? b + i0 * ldb : b + i0, ldb, beta, c + i0, ldc);
    }
  });
}

// A sum over `units` of per-unit products into C[count] (count values): unit_product(u, dst, beta,
// inner, scratch) writes (beta 0) or adds (beta 1) unit u's product into dst, its GEMMs on `inner`
// (`scratch` as for_units'). The
// units go in a fixed number of chunks (at most kSumChunks, fewer when C is large), each summed in
// unit order into a partial of its own, the chunks shared out among the threads; the partials are
// then added in chunk order. With one chunk (few units, or a C too large for partials) the units
// go in order, each product's GEMMs split over the threads. The same bits for any thread count.
constexpr std::int64_t kSumChunks = 8;

template <typename Acc, typename UnitProduct>
void chunked_sum(const CpuExecutor& executor, std::int64_t units, std::int64_t count, Acc* c,
                 const UnitProduct& unit_product) {
  constexpr std::int64_t kPartialBytes = std::int64_t{64} << 20;  // all partials together, at most
  const std::int64_t by_memory =
      kPartialBytes / std::max<std::int64_t>(1, count * static_cast<std::int64_t>(sizeof(Acc)));
  const std::int64_t chunks = units >= kParallelUnits ? std::max<std::int64_t>(1, std::min({kSumChunks, units, by_memory}))
                                                      : 1;
  if (chunks == 1) {
    std::vector<Acc> scratch;
    for (std::int64_t u = 0; u < units; ++u) unit_product(u, c, u == 0 ? 0.0 : 1.0, executor, scratch);
    return;
  }
  std::vector<Acc> partials(static_cast<std::size_t>((chunks - 1) * count));
  executor.run(chunks, 1, [&](std::int64_t c0, std::int64_t c1) {
    std::vector<Acc> scratch;
    for (std::int64_t chunk = c0; chunk < c1; ++chunk) {
      Acc* dst = chunk == 0 ? c : partials.data() + (chunk - 1) * count;
      const std::int64_t u0 = units * chunk / chunks, u1 = units * (chunk + 1) / chunks;
      for (std::int64_t u = u0; u < u1; ++u) unit_product(u, dst, u == u0 ? 0.0 : 1.0, serial_executor(), scratch);
    }
  });
  executor.run(count, cpu::kTaskElements, [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t chunk = 1; chunk < chunks; ++chunk) {
      const Acc* partial = partials.data() + (chunk - 1) * count;
#pragma omp simd
      for (std::int64_t i = i0; i < i1; ++i) c[i] += partial[i];
    }
  });
}

// The Gram matrix G[n, n] = F F^T of F[n, k] (rows `ld` apart): SYRK computes the upper triangle
// (half a GEMM's work), which is then mirrored. The k columns go in chunks (chunked_sum).
template <typename Acc>
void gram(const CpuExecutor& executor, std::int64_t n, std::int64_t k, const Acc* f, std::int64_t ld, Acc* g) {
  constexpr std::int64_t kColumns = 1024;  // per SYRK call
  const int ni = detail::blas_int(n, "n"), ldi = detail::blas_int(ld, "lda");
  const std::int64_t units = std::max<std::int64_t>(1, (k + kColumns - 1) / kColumns);
  chunked_sum(executor, units, n * n, g, [&](std::int64_t u, Acc* dst, double beta, const CpuExecutor&, auto&) {
    const std::int64_t k0 = u * kColumns, len = std::min(kColumns, k - k0);
    const int ki = detail::blas_int(std::max<std::int64_t>(len, 0), "k");
    if constexpr (std::is_same_v<Acc, double>) {
      blas().dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, ni, ki, 1.0, f + k0, ldi, beta, dst, ni);
    } else {
      blas().ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, ni, ki, 1.0f, f + k0, ldi, static_cast<float>(beta),
                   dst, ni);
    }
  });
  for (std::int64_t r = 1; r < n; ++r)
    for (std::int64_t c = 0; c < r; ++c) g[r * n + c] = g[c * n + r];
}

void zero_loss(void* loss, bool is_double) {
  if (is_double) *static_cast<double*>(loss) = 0.0;
  else *static_cast<float*>(loss) = 0.0f;
}

// `blas`: the executor of the GEMMs (gemm_executor).
template <typename Acc>
void similarity_preserving_typed(const SimilarityPreservingArgs& a, const CpuExecutor& executor,
                                 const CpuExecutor& blas) {
  const std::int64_t n = a.rows;
  const Acc* fs = static_cast<const Acc*>(a.student);
  const Acc* ft = static_cast<const Acc*>(a.teacher);
  const detail::NormalizedRowsWorkspace<Acc> workspace(a.workspace, n, n);
  Acc *gram_s = workspace.a_s, *gram_t = workspace.a_t, *d_s = workspace.d_s, *d_t = workspace.d_t;
  Acc* row_loss = workspace.row_loss;
  gram(blas, n, a.student_cols, fs, a.student_row_stride, gram_s);
  gram(blas, n, a.teacher_cols, ft, a.teacher_row_stride, gram_t);
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
    parallel_gemm(blas, false, false, n, cols, n, 1.0, d, n, f, ld, 0.0, static_cast<Acc*>(grad), cols);
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

// Every size and leading dimension the GEMMs below pass to CBLAS fits its int, checked before any
// of them runs (a check failing inside an executor's task would have to cross threads).
void check_blas_sizes(const ProjectionShape& s) {
  detail::blas_int(s.in_channels, "in_channels");
  detail::blas_int(s.out_channels, "out_channels");
  if (s.channels_last) {
    detail::blas_int(s.spatial_stride, "spatial_stride");
  } else {
    detail::blas_int(s.channel_stride, "channel_stride");
    detail::blas_int(samples_per_gemm(s) * s.spatial, "spatial");
  }
}

// Y = W X at every position: channels-last one GEMM cut into parts of rows; channels-first one
// GEMM per unit of `group` samples (samples_per_gemm), the units shared out (for_units).
template <typename Acc>
void project(const ProjectionShape& s, Acc* y, const CpuExecutor& executor) {
  const Acc* x = static_cast<const Acc*>(s.student);
  const Acc* w = static_cast<const Acc*>(s.weight);
  const std::int64_t cs = s.in_channels, ct = s.out_channels, sp = s.spatial;
  if (s.channels_last) {  // Y[N*S, Ct] = X[N*S, Cs] W^T
    parallel_gemm(executor, false, true, s.batch * sp, ct, cs, 1.0, x, s.spatial_stride, w, cs, 0.0, y, ct);
    return;
  }
  const std::int64_t group = samples_per_gemm(s), units = (s.batch + group - 1) / group;
  for_units<Acc>(executor, units, [&](std::int64_t u, const CpuExecutor& inner, std::vector<Acc>& scratch) {
    const std::int64_t b0 = u * group, count = std::min(group, s.batch - b0), cols = count * sp;
    if (group == 1) {  // Y_n[Ct, S] = W X_n[Cs, S]
      parallel_gemm(inner, false, false, ct, sp, cs, 1.0, w, cs, x + b0 * s.batch_stride, s.channel_stride, 0.0,
                    y + b0 * ct * sp, sp);
      return;
    }
    // Y_g[Ct, g*S] = W X_g[Cs, g*S]
    scratch.resize(static_cast<std::size_t>((cs + ct) * group * sp));
    Acc *xg = scratch.data(), *yg = xg + cs * cols;
    pack_samples(x, b0, count, cs, sp, s.batch_stride, s.channel_stride, xg);
    parallel_gemm(inner, false, false, ct, cols, cs, 1.0, w, cs, xg, cols, 0.0, yg, cols);
    unpack_samples(yg, b0, count, ct, sp, y);
  });
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
  if (s.channels_last) {
    if (gx)  // dX[N*S, Cs] = G[N*S, Ct] W
      parallel_gemm(executor, false, false, s.batch * sp, cs, ct, 1.0, g, ct, w, cs, 0.0, gx, cs);
    if (gw && s.batch > 0) {  // dW[Ct, Cs] = G^T X, the positions in parts
      constexpr std::int64_t kPositions = 512;  // a part of the sum
      const std::int64_t positions = s.batch * sp, parts = (positions + kPositions - 1) / kPositions;
      chunked_sum(executor, parts, ct * cs, gw, [&](std::int64_t p, Acc* dst, double beta, const CpuExecutor& inner,
                                                    auto&) {
        const std::int64_t i0 = p * kPositions, len = std::min(kPositions, positions - i0);
        parallel_gemm(inner, true, false, ct, cs, len, 1.0, g + i0 * ct, ct, x + i0 * s.spatial_stride,
                      s.spatial_stride, beta, dst, cs);
      });
    }
  } else {
    const std::int64_t group = samples_per_gemm(s), units = (s.batch + group - 1) / group;
    // A unit's dL/dy as one [Ct, count*S] matrix: the sample's own for one, else G_g packed into the
    // front of `scratch` (sized for G_g and one [Cs, g*S] matrix after it).
    const auto unit_g = [&](std::int64_t b0, std::int64_t count, std::vector<Acc>& scratch) -> const Acc* {
      if (group == 1) return g + b0 * ct * sp;
      scratch.resize(static_cast<std::size_t>((ct + cs) * group * sp));
      pack_samples(g, b0, count, ct, sp, ct * sp, sp, scratch.data());
      return scratch.data();
    };
    // dX of a unit = W^T G: into gx for one sample, else through the room after G_g in `scratch`.
    const auto input_gradient = [&](std::int64_t b0, std::int64_t count, const Acc* gu, std::vector<Acc>& scratch,
                                    const CpuExecutor& inner) {
      const std::int64_t cols = count * sp;
      if (group == 1) {
        parallel_gemm(inner, true, false, cs, sp, ct, 1.0, w, cs, gu, sp, 0.0, gx + b0 * cs * sp, sp);
        return;
      }
      Acc* dxg = scratch.data() + ct * cols;
      parallel_gemm(inner, true, false, cs, cols, ct, 1.0, w, cs, gu, cols, 0.0, dxg, cols);
      unpack_samples(dxg, b0, count, cs, sp, gx);
    };
    if (gw && s.batch > 0) {
      // dW = sum over units of G X^T, each unit's dX from the same G (packed once for both GEMMs).
      chunked_sum(executor, units, ct * cs, gw,
                  [&](std::int64_t u, Acc* dst, double beta, const CpuExecutor& inner, std::vector<Acc>& scratch) {
        const std::int64_t b0 = u * group, count = std::min(group, s.batch - b0), cols = count * sp;
        const Acc* gu = unit_g(b0, count, scratch);
        if (gx) input_gradient(b0, count, gu, scratch, inner);  // before X_g takes dX_g's room
        if (group == 1) {
          parallel_gemm(inner, false, true, ct, cs, sp, 1.0, gu, sp, x + b0 * s.batch_stride, s.channel_stride, beta,
                        dst, cs);
          return;
        }
        Acc* xg = scratch.data() + ct * cols;
        pack_samples(x, b0, count, cs, sp, s.batch_stride, s.channel_stride, xg);
        parallel_gemm(inner, false, true, ct, cs, cols, 1.0, gu, cols, xg, cols, beta, dst, cs);
      });
    } else if (gx) {
      for_units<Acc>(executor, units, [&](std::int64_t u, const CpuExecutor& inner, std::vector<Acc>& scratch) {
        const std::int64_t b0 = u * group, count = std::min(group, s.batch - b0);
        input_gradient(b0, count, unit_g(b0, count, scratch), scratch, inner);
      });
    }
  }
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
  const BlasOnCallerThreads blas_threads(executor);
  if (args.is_double) similarity_preserving_typed<double>(args, executor, gemm_executor(executor));
  else similarity_preserving_typed<float>(args, executor, gemm_executor(executor));
}

void projected_feature_mse_cpu(const ProjectedFeatureMseArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  const ProjectionShape& s = args.shape;
  if (s.batch > 0) {
    check_blas_sizes(s);
    const BlasOnCallerThreads blas_threads(executor);
    if (s.is_double) project(s, static_cast<double*>(args.projection), gemm_executor(executor));
    else project(s, static_cast<float*>(args.projection), gemm_executor(executor));
  }
  feature_mse_cpu(detail::projection_error_args(args), executor);
}

void projection_backward_cpu(const ProjectionBackwardArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  if (args.shape.batch == 0) {  // zero gradients for the weight and the bias, no BLAS call
    const std::size_t size = args.shape.is_double ? sizeof(double) : sizeof(float);
    const std::size_t ct = static_cast<std::size_t>(args.shape.out_channels);
    if (args.grad_weight) std::memset(args.grad_weight, 0, size * ct * static_cast<std::size_t>(args.shape.in_channels));
    if (args.grad_bias) std::memset(args.grad_bias, 0, size * ct);
    return;
  }
  check_blas_sizes(args.shape);
  const BlasOnCallerThreads blas_threads(executor);
  if (args.shape.is_double) projection_backward_typed<double>(args, gemm_executor(executor));
  else projection_backward_typed<float>(args, gemm_executor(executor));
}

}  // namespace fusedkd
