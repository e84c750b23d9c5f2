// The feature-map launchers alone (no LibTorch), CPU and CUDA, against float64 references written
// from the spec's formulas: losses directly, gradients against central differences of the
// reference loss. Gradient buffers are poisoned with NaN first, so an element the kernel fails to
// write shows up; totals are checked to be bit-identical from run to run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fusedkd/feature.h"
#include "kernel_test_support.h"

#if FUSEDKD_WITH_CUDA
#include <cublas_v2.h>
#endif

namespace fusedkd::testing {
namespace {

// d loss / d x_i by central differences of a float64 loss.
std::vector<double> numeric_gradient(std::vector<double> x, const std::function<double(const std::vector<double>&)>& f) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double h = 1e-6 * std::max(1.0, std::abs(x[i]));
    const double keep = x[i];
    x[i] = keep + h;
    const double up = f(x);
    x[i] = keep - h;
    const double down = f(x);
    x[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

class FeatureKernel : public BackendTest {};

// A two-input loss's arguments pointed at one run's buffers: inputs {student, teacher}, outputs
// {loss} or {loss, grad_student, grad_teacher}, the workspace.
inline void point_at(const void*& field, const void* data) { field = data; }
inline void point_at(FeatureMap& field, const void* data) { field.data = data; }
template <typename Args>
Args bound(Args a, const std::vector<const void*>& in, const std::vector<void*>& out, void* workspace) {
  point_at(a.student, in[0]);
  point_at(a.teacher, in[1]);
  a.loss = out[0];
  if (out.size() >= 3) {
    a.grad_student = out[1];
    a.grad_teacher = out[2];
  }
  a.workspace = workspace;
  return a;
}

// ---------------------------------------------------------------- feature_mse

TEST_P(FeatureKernel, FeatureMseMatchesReference) {
  const Backend backend = GetParam();
  const std::vector<std::pair<DType, DType>> pairs = {{DType::Float32, DType::Float32},
                                                      {DType::Float64, DType::Float64},
                                                      {DType::BFloat16, DType::BFloat16},
                                                      {DType::Float16, DType::Float16},
                                                      {DType::Float32, DType::BFloat16},
                                                      {DType::Float16, DType::Float32}};
  for (const auto& [ds, dt] : pairs) {
    for (const std::int64_t numel : {1L, 7L, 8L, 1031L, 70003L}) {
      for (const bool elementwise : {false, true}) {
        const Buffer s = Buffer::from(ds, random_values(numel, 1 + numel, 2.0));
        const Buffer t = Buffer::from(dt, random_values(numel, 2 + numel, 2.0));
        const bool is_double = ds == DType::Float64 || dt == DType::Float64;
        const DType loss_type = is_double ? DType::Float64 : DType::Float32;
        const double scale = elementwise ? 1.0 : 1.0 / static_cast<double>(numel);
        Buffer loss(loss_type, elementwise ? numel : 1), gs(ds, numel), gt(dt, numel);
        gs.poison();
        gt.poison();
        FeatureMseArgs args;
        args.student_dtype = ds;
        args.teacher_dtype = dt;
        args.numel = numel;
        args.scale = scale;
        args.elementwise_loss = elementwise;
        run_on_backend(backend, {&s, &t}, {&loss, &gs, &gt}, feature_mse_workspace_bytes(args),
                       [&](const auto& in, const auto& out, void* workspace, void* stream) {
                         const FeatureMseArgs a = bound(args, in, out, workspace);
                         FUSEDKD_ON_BACKEND(backend, stream, feature_mse_cpu(a),
                                            feature_mse_cuda(a, FUSEDKD_TEST_STREAM(stream)));
                       });
        std::vector<double> ref_loss(elementwise ? numel : 1, 0.0), ref_gs(numel), ref_gt(numel);
        for (std::int64_t i = 0; i < numel; ++i) {
          const double d = s.get(i) - t.get(i);
          if (elementwise) ref_loss[i] = d * d;
          else ref_loss[0] += d * d * scale;
          ref_gs[i] = 2 * scale * d;
          ref_gt[i] = -2 * scale * d;
        }
        std::ostringstream where;
        where << dtype_name(ds) << "/" << dtype_name(dt) << " numel " << numel << " elementwise " << elementwise;
        const double tol = std::max(tolerance(loss_type), 1e-6);
        EXPECT_LT(rel_diff(loss.values(), ref_loss), tol) << where.str();
        EXPECT_LT(rel_diff(gs.values(), ref_gs), std::max(tolerance(ds), 1e-6)) << where.str();
        EXPECT_LT(rel_diff(gt.values(), ref_gt), std::max(tolerance(dt), 1e-6)) << where.str();
      }
    }
  }
}

TEST_P(FeatureKernel, FeatureMseTotalIsTheSameEveryRun) {
  const Backend backend = GetParam();
  const std::int64_t numel = 1 << 20;
  const Buffer s = Buffer::from(DType::Float32, random_values(numel, 5));
  const Buffer t = Buffer::from(DType::Float32, random_values(numel, 6));
  std::vector<double> totals;
  for (int run = 0; run < 3; ++run) {
    Buffer loss(DType::Float32, 1);
    FeatureMseArgs args;
    args.numel = numel;
    args.scale = 1.0 / numel;
    run_on_backend(backend, {&s, &t}, {&loss}, feature_mse_workspace_bytes(args),
                   [&](const auto& in, const auto& out, void* workspace, void* stream) {
                     const FeatureMseArgs a = bound(args, in, out, workspace);
                     FUSEDKD_ON_BACKEND(backend, stream, feature_mse_cpu(a),
                                        feature_mse_cuda(a, FUSEDKD_TEST_STREAM(stream)));
                   });
    totals.push_back(loss.get(0));
  }
  EXPECT_EQ(totals[0], totals[1]);
  EXPECT_EQ(totals[0], totals[2]);
  EXPECT_NEAR(totals[0], 2.0, 0.02);  // E[(s - t)^2] = 2 for two unit normals
}

// ---------------------------------------------------------------- attention transfer

struct MapShape {
  std::int64_t batch, cs, ct, spatial;
  bool s_last, t_last;
};

double element(const std::vector<double>& x, std::int64_t channels, std::int64_t spatial, bool last, std::int64_t n,
               std::int64_t c, std::int64_t k) {
  return x[last ? (n * spatial + k) * channels + c : (n * channels + c) * spatial + k];
}

// Per-sample losses from the spec: a = normalize(mean_c |x|^p), l_n = sum (a_s - a_t)^2.
std::vector<double> attention_reference(const std::vector<double>& s, const std::vector<double>& t,
                                        const MapShape& m, double p) {
  std::vector<double> rows(m.batch);
  for (std::int64_t n = 0; n < m.batch; ++n) {
    std::vector<double> as(m.spatial, 0.0), at(m.spatial, 0.0);
    for (std::int64_t k = 0; k < m.spatial; ++k) {
      for (std::int64_t c = 0; c < m.cs; ++c) as[k] += std::pow(std::abs(element(s, m.cs, m.spatial, m.s_last, n, c, k)), p) / m.cs;
      for (std::int64_t c = 0; c < m.ct; ++c) at[k] += std::pow(std::abs(element(t, m.ct, m.spatial, m.t_last, n, c, k)), p) / m.ct;
    }
    double ns = 0, nt = 0;
    for (std::int64_t k = 0; k < m.spatial; ++k) {
      ns += as[k] * as[k];
      nt += at[k] * at[k];
    }
    ns = std::max(std::sqrt(ns), 1e-12);
    nt = std::max(std::sqrt(nt), 1e-12);
    double l = 0;
    for (std::int64_t k = 0; k < m.spatial; ++k) l += (as[k] / ns - at[k] / nt) * (as[k] / ns - at[k] / nt);
    rows[n] = l;
  }
  return rows;
}

TEST_P(FeatureKernel, AttentionTransferMatchesReference) {
  const Backend backend = GetParam();
  const std::vector<MapShape> shapes = {{1, 1, 1, 1, false, false}, {3, 5, 2, 7, false, false},
                                        {2, 4, 6, 9, true, false},  {2, 3, 3, 49, true, true},
                                        {4, 37, 5, 33, false, true},
                                        // channels first over full blocks of positions and a rest (the
                                        // CPU map sums 64 float32 / 32 float64 positions at a time)
                                        {2, 6, 3, 150, false, false}};
  for (const MapShape& m : shapes) {
    for (const double p : {1.0, 2.0, 3.0}) {
      for (const DType dtype : {DType::Float64, DType::Float32, DType::BFloat16, DType::Float16}) {
        for (const bool per_row : {false, true}) {
          const std::int64_t ns = m.batch * m.cs * m.spatial, nt = m.batch * m.ct * m.spatial;
          const Buffer s = Buffer::from(dtype, random_values(ns, 11 + m.spatial));
          const Buffer t = Buffer::from(dtype, random_values(nt, 12 + m.spatial));
          const bool is_double = dtype == DType::Float64;
          const DType loss_type = is_double ? DType::Float64 : DType::Float32;
          const double scale = per_row ? 1.0 : 1.0 / m.batch;
          Buffer loss(loss_type, per_row ? m.batch : 1), gs(dtype, ns), gt(dtype, nt);
          gs.poison();
          gt.poison();
          AttentionTransferArgs args;
          args.student.dtype = args.teacher.dtype = dtype;
          args.student.channels = m.cs;
          args.student.channels_last = m.s_last;
          args.teacher.channels = m.ct;
          args.teacher.channels_last = m.t_last;
          args.batch = m.batch;
          args.spatial = m.spatial;
          args.p = p;
          args.scale = scale;
          args.per_row_loss = per_row;
          run_on_backend(backend, {&s, &t}, {&loss, &gs, &gt}, attention_transfer_workspace_bytes(args),
                         [&](const auto& in, const auto& out, void* workspace, void* stream) {
                           const AttentionTransferArgs a = bound(args, in, out, workspace);
                           FUSEDKD_ON_BACKEND(backend, stream, attention_transfer_cpu(a),
                                              attention_transfer_cuda(a, FUSEDKD_TEST_STREAM(stream)));
                         });
          const std::vector<double> sv = s.values(), tv = t.values();
          const auto total = [&](const std::vector<double>& x, const std::vector<double>& y) {
            double sum = 0;
            for (double r : attention_reference(x, y, m, p)) sum += r * scale;
            return sum;
          };
          std::vector<double> ref = attention_reference(sv, tv, m, p);
          if (!per_row) ref = {total(sv, tv)};
          std::ostringstream where;
          where << dtype_name(dtype) << " p " << p << " N " << m.batch << " Cs " << m.cs << " Ct " << m.ct << " S "
                << m.spatial << " last " << m.s_last << m.t_last << " per_row " << per_row;
          EXPECT_LT(rel_diff(loss.values(), ref), std::max(tolerance(dtype), 1e-6)) << where.str();
          if (dtype != DType::Float64 || per_row) continue;  // gradients: float64 against differences
          EXPECT_LT(rel_diff(gs.values(), numeric_gradient(sv, [&](const auto& x) { return total(x, tv); })), 1e-6)
              << where.str();
          EXPECT_LT(rel_diff(gt.values(), numeric_gradient(tv, [&](const auto& y) { return total(sv, y); })), 1e-6)
              << where.str();
        }
      }
    }
  }
}

// ---------------------------------------------------------------- GEMM ops

#if FUSEDKD_WITH_CUDA
struct Cublas {
  cublasHandle_t handle = nullptr;
  Cublas() { EXPECT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS); }
  ~Cublas() { cublasDestroy(handle); }
};
#endif

double similarity_reference(const std::vector<double>& fs, std::int64_t ds, std::int64_t lds,
                            const std::vector<double>& ft, std::int64_t dt, std::int64_t ldt, std::int64_t n) {
  auto gram = [n](const std::vector<double>& f, std::int64_t d, std::int64_t ld) {
    std::vector<double> g(n * n, 0.0);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < n; ++j)
        for (std::int64_t k = 0; k < d; ++k) g[i * n + j] += f[i * ld + k] * f[j * ld + k];
    for (std::int64_t i = 0; i < n; ++i) {
      double norm = 0;
      for (std::int64_t j = 0; j < n; ++j) norm += g[i * n + j] * g[i * n + j];
      norm = std::max(std::sqrt(norm), 1e-12);
      for (std::int64_t j = 0; j < n; ++j) g[i * n + j] /= norm;
    }
    return g;
  };
  const std::vector<double> gs = gram(fs, ds, lds), gt = gram(ft, dt, ldt);
  double loss = 0;
  for (std::int64_t i = 0; i < n * n; ++i) loss += (gs[i] - gt[i]) * (gs[i] - gt[i]);
  return loss / static_cast<double>(n * n);
}

TEST_P(FeatureKernel, SimilarityPreservingMatchesReference) {
  const Backend backend = GetParam();
  struct Case {
    std::int64_t n, ds, lds, dt;
  };
  for (const Case c : {Case{1, 3, 3, 2}, Case{5, 7, 9, 4}, Case{17, 30, 30, 12}}) {
    for (const bool is_double : {true, false}) {
      const DType dtype = is_double ? DType::Float64 : DType::Float32;
      const Buffer fs = Buffer::from(dtype, random_values(c.n * c.lds, 21 + c.n));
      const Buffer ft = Buffer::from(dtype, random_values(c.n * c.dt, 22 + c.n));
      Buffer loss(dtype, 1), gs(dtype, c.n * c.ds), gt(dtype, c.n * c.dt);
      gs.poison();
      gt.poison();
      SimilarityPreservingArgs args;
      args.student_cols = c.ds;
      args.student_row_stride = c.lds;
      args.teacher_cols = c.dt;
      args.teacher_row_stride = c.dt;
      args.rows = c.n;
      args.is_double = is_double;
      run_on_backend(backend, {&fs, &ft}, {&loss, &gs, &gt}, similarity_preserving_workspace_bytes(args),
                     [&](const auto& in, const auto& out, void* workspace, void*) {
                       const SimilarityPreservingArgs a = bound(args, in, out, workspace);
                       if (backend == Backend::Cpu) {
                         similarity_preserving_cpu(a);
                       } else {
#if FUSEDKD_WITH_CUDA
                         Cublas blas;
                         similarity_preserving_cuda(a, blas.handle);
#endif
                       }
                     });
      const std::vector<double> sv = fs.values(), tv = ft.values();
      const double ref = similarity_reference(sv, c.ds, c.lds, tv, c.dt, c.dt, c.n);
      std::ostringstream where;
      where << "n " << c.n << " ds " << c.ds << " dt " << c.dt << " double " << is_double;
      EXPECT_LT(std::abs(loss.get(0) - ref), std::max(tolerance(dtype), 1e-6) * std::max(ref, 1e-3)) << where.str();
      if (!is_double) continue;
      std::vector<double> num_s = numeric_gradient(sv, [&](const auto& x) {
        return similarity_reference(x, c.ds, c.lds, tv, c.dt, c.dt, c.n);
      });
      std::vector<double> packed(c.n * c.ds);  // the gradient is contiguous [n, ds]
      for (std::int64_t i = 0; i < c.n; ++i)
        for (std::int64_t k = 0; k < c.ds; ++k) packed[i * c.ds + k] = num_s[i * c.lds + k];
      EXPECT_LT(rel_diff(gs.values(), packed), 1e-6) << where.str();
      EXPECT_LT(rel_diff(gt.values(), numeric_gradient(tv, [&](const auto& y) {
                           return similarity_reference(sv, c.ds, c.lds, y, c.dt, c.dt, c.n);
                         })),
                1e-6)
          << where.str();
    }
  }
}

// A float64 projection's random inputs (x, w, b, t from seeds seed..seed+3) and its outputs: the
// loss, y, the teacher's gradient and dX, dW, db.
struct ProjectionRun {
  Buffer x, w, b, t;
  Buffer loss, projection, grad_teacher, grad_x, grad_w, grad_b;
};

// projected_feature_mse then projection_backward on `backend`, for [batch, cs, spatial] float64
// maps (channels-first or channels-last) and a [ct, cs] weight; the bias when `with_bias`.
ProjectionRun run_projection(Backend backend, std::int64_t batch, std::int64_t cs, std::int64_t ct,
                             std::int64_t spatial, bool channels_last, bool with_bias, unsigned seed) {
  const std::int64_t nx = batch * cs * spatial, ny = batch * ct * spatial;
  ProjectedFeatureMseArgs args;
  args.shape.batch = batch;
  args.shape.in_channels = cs;
  args.shape.out_channels = ct;
  args.shape.spatial = spatial;
  args.shape.channels_last = channels_last;
  args.shape.channel_stride = channels_last ? 1 : spatial;
  args.shape.spatial_stride = channels_last ? cs : 1;
  args.shape.batch_stride = cs * spatial;
  args.shape.is_double = true;
  args.teacher_dtype = DType::Float64;
  args.scale = 1.0 / ny;
  ProjectionRun r{Buffer::from(DType::Float64, random_values(nx, seed)),
                  Buffer::from(DType::Float64, random_values(ct * cs, seed + 1)),
                  Buffer::from(DType::Float64, random_values(ct, seed + 2)),
                  Buffer::from(DType::Float64, random_values(ny, seed + 3)),
                  Buffer(DType::Float64, 1),
                  Buffer(DType::Float64, ny),
                  Buffer(DType::Float64, ny),
                  Buffer(DType::Float64, nx),
                  Buffer(DType::Float64, ct * cs),
                  Buffer(DType::Float64, ct)};
  r.grad_x.poison();
  r.grad_w.poison();
  r.grad_b.poison();
  run_on_backend(backend, {&r.x, &r.w, &r.b, &r.t},
                 {&r.loss, &r.projection, &r.grad_teacher, &r.grad_x, &r.grad_w, &r.grad_b},
                 projected_feature_mse_workspace_bytes(args),
                 [&](const auto& in, const auto& out, void* workspace, void*) {
                   ProjectedFeatureMseArgs a = args;
                   a.shape.student = in[0];
                   a.shape.weight = in[1];
                   a.bias = with_bias ? in[2] : nullptr;
                   a.teacher = in[3];
                   a.loss = out[0];
                   a.projection = out[1];
                   a.grad_teacher = out[2];
                   a.workspace = workspace;
                   ProjectionBackwardArgs back;
                   back.shape = a.shape;
                   back.grad_projection = out[1];
                   back.grad_student = out[3];
                   back.grad_weight = out[4];
                   back.grad_bias = out[5];
                   if (backend == Backend::Cpu) {
                     projected_feature_mse_cpu(a);
                     projection_backward_cpu(back);
                   } else {
  #if FUSEDKD_WITH_CUDA
                     Cublas blas;
                     projected_feature_mse_cuda(a, blas.handle);
                     projection_backward_cuda(back, blas.handle);
  #endif
                   }
                 });
  return r;
}

TEST_P(FeatureKernel, ProjectionMatchesReference) {
  const Backend backend = GetParam();
  const std::int64_t cs = 5, ct = 4;
  // (batch, spatial): on the CPU, channels-first samples of small spatial size are multiplied in
  // groups (6 at S = 100: a full group and a partial one); larger S one sample at a time.
  const std::pair<std::int64_t, std::int64_t> sizes[] = {{3, 6}, {7, 100}, {2, 600}};
  for (const auto& size : sizes) {
    const std::int64_t batch = size.first, spatial = size.second;  // named: lambdas capture them
    for (const bool channels_last : {false, true}) {
      for (const bool with_bias : {false, true}) {
        const std::int64_t nx = batch * cs * spatial, ny = batch * ct * spatial;
        const double scale = 1.0 / ny;
        const ProjectionRun run = run_projection(backend, batch, cs, ct, spatial, channels_last, with_bias, 31);
        const Buffer &x = run.x, &w = run.w, &b = run.b, &t = run.t;
        const Buffer &loss = run.loss, &gt = run.grad_teacher, &gx = run.grad_x, &gw = run.grad_w, &gb = run.grad_b;
        // y[n, o, k] = sum_c W[o, c] x[n, c, k] + b[o], in each side's layout.
        const auto reference = [&](const std::vector<double>& xv, const std::vector<double>& wv,
                                   const std::vector<double>& bv, const std::vector<double>& tv) {
          double sum = 0;
          for (std::int64_t n = 0; n < batch; ++n)
            for (std::int64_t o = 0; o < ct; ++o)
              for (std::int64_t k = 0; k < spatial; ++k) {
                double y = with_bias ? bv[o] : 0.0;
                for (std::int64_t c = 0; c < cs; ++c) y += wv[o * cs + c] * element(xv, cs, spatial, channels_last, n, c, k);
                const double d = y - element(tv, ct, spatial, channels_last, n, o, k);
                sum += d * d * scale;
              }
          return sum;
        };
        const std::vector<double> xv = x.values(), wv = w.values(), bv = b.values(), tv = t.values();
        std::ostringstream where;
        where << "batch " << batch << " spatial " << spatial << " channels_last " << channels_last << " bias "
              << with_bias;
        EXPECT_NEAR(loss.get(0), reference(xv, wv, bv, tv), 1e-12) << where.str();
        EXPECT_LT(rel_diff(gx.values(), numeric_gradient(xv, [&](const auto& v) { return reference(v, wv, bv, tv); })),
                  1e-6)
            << where.str();
        EXPECT_LT(rel_diff(gw.values(), numeric_gradient(wv, [&](const auto& v) { return reference(xv, v, bv, tv); })),
                  1e-6)
            << where.str();
        EXPECT_LT(rel_diff(gt.values(), numeric_gradient(tv, [&](const auto& v) { return reference(xv, wv, bv, v); })),
                  1e-6)
            << where.str();
        if (with_bias) {
          EXPECT_LT(rel_diff(gb.values(), numeric_gradient(bv, [&](const auto& v) { return reference(xv, wv, v, tv); })),
                    1e-6)
              << where.str();
        }
      }
    }
  }
}

// Shapes whose CPU GEMMs are shared out by sample or group (8 units and more: each unit's GEMM on
// one thread, dW summed over 8 chunks in chunk order) and, channels-last, whose dW sums more than
// 8 parts of 512 positions; against the gradients in closed form (float64): with d = 2 scale (y - t),
// dX = W^T d, dW = sum d x^T, db = sum d.
TEST_P(FeatureKernel, ProjectionOfManySamplesMatchesClosedForm) {
  const Backend backend = GetParam();
  const std::int64_t cs = 6, ct = 5;
  const std::pair<std::int64_t, std::int64_t> sizes[] = {{12, 520}, {80, 60}};
  for (const auto& size : sizes) {
    const std::int64_t batch = size.first, spatial = size.second;
    for (const bool channels_last : {false, true}) {
      const std::int64_t nx = batch * cs * spatial, ny = batch * ct * spatial;
      const double scale = 1.0 / ny;
      const ProjectionRun run = run_projection(backend, batch, cs, ct, spatial, channels_last, true, 41);
      const Buffer &loss = run.loss, &gx = run.grad_x, &gw = run.grad_w, &gb = run.grad_b;
      const std::vector<double> xv = run.x.values(), wv = run.w.values(), bv = run.b.values(), tv = run.t.values();
      std::vector<double> ref_gx(nx, 0.0), ref_gw(ct * cs, 0.0), ref_gb(ct, 0.0);
      double ref_loss = 0;
      for (std::int64_t n = 0; n < batch; ++n)
        for (std::int64_t k = 0; k < spatial; ++k)
          for (std::int64_t o = 0; o < ct; ++o) {
            double y = bv[o];
            for (std::int64_t c = 0; c < cs; ++c) y += wv[o * cs + c] * element(xv, cs, spatial, channels_last, n, c, k);
            const double diff = y - element(tv, ct, spatial, channels_last, n, o, k);
            ref_loss += scale * diff * diff;
            const double d = 2 * scale * diff;
            ref_gb[o] += d;
            for (std::int64_t c = 0; c < cs; ++c) {
              const std::int64_t xi = channels_last ? (n * spatial + k) * cs + c : (n * cs + c) * spatial + k;
              ref_gx[xi] += wv[o * cs + c] * d;
              ref_gw[o * cs + c] += d * xv[xi];
            }
          }
      std::ostringstream where;
      where << "batch " << batch << " spatial " << spatial << " channels_last " << channels_last;
      EXPECT_NEAR(loss.get(0), ref_loss, 1e-12 * ref_loss) << where.str();
      EXPECT_LT(rel_diff(gx.values(), ref_gx), 1e-12) << where.str();
      EXPECT_LT(rel_diff(gw.values(), ref_gw), 1e-12) << where.str();
      EXPECT_LT(rel_diff(gb.values(), ref_gb), 1e-12) << where.str();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, FeatureKernel, ::testing::Values(Backend::Cpu, Backend::Cuda), backend_test_name);

// float16_gradients_in_float32 on the CPU: float16 inputs read as they are, their gradients written
// in float32, equal the gradients of the same values given as float32 (the float32 copy the torch
// ops passed before). feature_mse: a float16 pair, and a float16 student beside a float32 or a
// float64 teacher (accumulating in double), the total and the elementwise loss; attention_transfer:
// channels first (the blocked map) and last, p = 1, 2 and 3. A float16 student's float32 gradient
// cannot overwrite the student. The CUDA launchers reject the option before touching a device.
TEST(FeatureLauncher, Float16GradientsInFloat32MatchTheFloat32Copy) {
  const std::int64_t n = 3 * 70000 + 11;  // more than one chunk (kTaskElements) and a rest
  const std::vector<double> sv = Buffer::from(DType::Float16, random_values(n, 31)).values();
  const std::vector<double> tv = Buffer::from(DType::Float16, random_values(n, 32)).values();
  for (const DType teacher_dtype : {DType::Float16, DType::Float32, DType::Float64}) {
    for (const bool elementwise : {false, true}) {
      const auto run = [&](DType s_dtype, DType t_dtype, bool wide) {
        const Buffer s = Buffer::from(s_dtype, sv), t = Buffer::from(t_dtype, tv);
        Buffer loss(loss_dtype(s_dtype, t_dtype), elementwise ? n : 1), gs(gradient_dtype(s_dtype, wide), n),
            gt(gradient_dtype(t_dtype, wide), n);
        std::vector<unsigned char> workspace;
        FeatureMseArgs args;
        args.student = s.bytes.data();
        args.student_dtype = s_dtype;
        args.teacher = t.bytes.data();
        args.teacher_dtype = t_dtype;
        args.numel = n;
        args.scale = 1.0 / static_cast<double>(n);
        args.elementwise_loss = elementwise;
        args.loss = loss.bytes.data();
        args.grad_student = gs.bytes.data();
        args.grad_teacher = gt.bytes.data();
        args.float16_gradients_in_float32 = wide;
        workspace.resize(feature_mse_workspace_bytes(args));
        args.workspace = workspace.data();
        feature_mse_cpu(args);
        return std::vector<std::vector<double>>{loss.values(), gs.values(), gt.values()};
      };
      const auto wide = run(DType::Float16, teacher_dtype, true);
      const auto copy = run(DType::Float32, teacher_dtype == DType::Float64 ? DType::Float64 : DType::Float32, false);
      for (std::size_t i = 0; i < wide.size(); ++i)
        EXPECT_LT(rel_diff(wide[i], copy[i]), 1e-6) << "output " << i << " teacher " << dtype_name(teacher_dtype);
    }
  }
  {  // in place: the student's own buffer cannot take its float32 gradient
    Buffer s = Buffer::from(DType::Float16, sv), t = Buffer::from(DType::Float16, tv);
    Buffer loss(DType::Float32, 1);
    FeatureMseArgs args;
    args.student = s.bytes.data();
    args.student_dtype = args.teacher_dtype = DType::Float16;
    args.teacher = t.bytes.data();
    args.numel = n;
    args.loss = loss.bytes.data();
    args.grad_student = s.bytes.data();
    args.float16_gradients_in_float32 = true;
    std::vector<unsigned char> workspace(feature_mse_workspace_bytes(args));
    args.workspace = workspace.data();
    EXPECT_THROW(feature_mse_cpu(args), std::invalid_argument);
  }

  const std::vector<MapShape> shapes = {{3, 5, 4, 150, false, false}, {2, 7, 3, 30, true, false}};
  for (const MapShape& m : shapes) {
    for (const double p : {1.0, 2.0, 3.0}) {
      const std::int64_t ns = m.batch * m.cs * m.spatial, nt = m.batch * m.ct * m.spatial;
      const std::vector<double> msv = Buffer::from(DType::Float16, random_values(ns, 33)).values();
      const std::vector<double> mtv = Buffer::from(DType::Float16, random_values(nt, 34)).values();
      const auto run = [&](DType dtype, bool wide) {
        const Buffer s = Buffer::from(dtype, msv), t = Buffer::from(dtype, mtv);
        Buffer loss(DType::Float32, 1), gs(DType::Float32, ns), gt(DType::Float32, nt);
        AttentionTransferArgs args;
        args.student = {s.bytes.data(), dtype, m.cs, m.s_last};
        args.teacher = {t.bytes.data(), dtype, m.ct, m.t_last};
        args.batch = m.batch;
        args.spatial = m.spatial;
        args.p = p;
        args.loss = loss.bytes.data();
        args.grad_student = gs.bytes.data();
        args.grad_teacher = gt.bytes.data();
        args.float16_gradients_in_float32 = wide;
        std::vector<unsigned char> workspace(attention_transfer_workspace_bytes(args));
        args.workspace = workspace.data();
        attention_transfer_cpu(args);
        return std::vector<std::vector<double>>{loss.values(), gs.values(), gt.values()};
      };
      const auto wide = run(DType::Float16, true);
      const auto copy = run(DType::Float32, false);
      for (std::size_t i = 0; i < wide.size(); ++i)
        EXPECT_LT(rel_diff(wide[i], copy[i]), 1e-6) << "output " << i << " p " << p << " S " << m.spatial;
    }
  }
}

#if FUSEDKD_WITH_CUDA
TEST(FeatureLauncher, CudaRejectsFloat32GradientsOfFloat16) {
  fusedkd::testing::Float16GradientRequest request;
  FeatureMseArgs mse;
  mse.student = mse.teacher = request.x.data();
  mse.student_dtype = mse.teacher_dtype = DType::Float16;
  mse.numel = 8;
  EXPECT_THROW(feature_mse_cuda(request.ask(mse), nullptr), std::invalid_argument);
  AttentionTransferArgs at;
  at.student = at.teacher = {request.x.data(), DType::Float16, 2, false};
  at.batch = 1;
  at.spatial = 4;
  EXPECT_THROW(attention_transfer_cuda(request.ask(at), nullptr), std::invalid_argument);
}
#endif

}  // namespace
}  // namespace fusedkd::testing
