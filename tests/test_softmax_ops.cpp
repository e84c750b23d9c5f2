// The LibTorch ops softmax_t / log_softmax_t against the LibTorch composites softmax(x / T) and
// log_softmax(x / T): values, gradients (autograd on the composite), dtypes, shapes, layouts,
// masked entries, the C++ API, Meta shapes, and every bad input the spec lists for them.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "fusedkd/build_config.h"
#include "fusedkd/torch.h"
#include "op_test_support.h"

namespace {

using fusedkd::testing::expect_error;
using fusedkd::testing::missing_device;
using fusedkd::testing::relative_error;

using Op = at::Tensor (*)(const at::Tensor&, double);

bool cuda_available() { return torch::cuda::is_available(); }

at::Tensor composite(const at::Tensor& x, double temperature, bool log) {
  return log ? torch::log_softmax(x / temperature, -1) : torch::softmax(x / temperature, -1);
}

double tolerance(at::ScalarType type) {
  return type == at::kDouble ? 1e-12 : type == at::kFloat ? 5e-6 : 1e-2;
}

// Logits, with about 1% outliers (x15) unless `outliers` is false; rounded to `type`, so the
// reference sees what the op reads.
at::Tensor logits(at::IntArrayRef shape, at::ScalarType type, const at::Device& device, int seed,
                  bool outliers = true) {
  torch::manual_seed(seed);
  at::Tensor x = torch::randn(shape, torch::kDouble) * 3;
  if (outliers) x = torch::where(torch::rand(shape, torch::kDouble) < 0.01, x * 15, x);
  return x.to(type).to(device);
}

struct OpCase {
  std::string name;
  bool log;
};

class SoftmaxOps : public ::testing::TestWithParam<std::tuple<bool, std::string>> {
 protected:
  bool log() const { return std::get<0>(GetParam()); }
  at::Device device() const { return at::Device(std::get<1>(GetParam())); }
  at::Tensor run(const at::Tensor& x, double temperature) const {
    return log() ? fusedkd::log_softmax_t(x, temperature) : fusedkd::softmax_t(x, temperature);
  }
  void SetUp() override {
    if (const char* why = missing_device(device())) GTEST_SKIP() << why;
  }
};

TEST_P(SoftmaxOps, ForwardMatchesCompositeForEveryDtypeAndShape) {
  const std::vector<std::vector<int64_t>> shapes = {{1, 1}, {7}, {3, 7}, {2, 3, 1031}, {5, 4096}, {2, 20000}};
  const double temperatures[] = {0.05, 0.5, 1.0, 4.0, 100.0};
  int seed = 0;
  for (at::ScalarType type : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (const auto& shape : shapes) {
      const double temperature = temperatures[seed % 5];
      const at::Tensor x = logits(shape, type, device(), ++seed);
      const at::Tensor out = run(x, temperature);
      EXPECT_EQ(out.scalar_type(), type);
      EXPECT_EQ(out.sizes(), x.sizes());
      EXPECT_EQ(out.device(), x.device());
      const at::Tensor ref = composite(x.to(at::kDouble), temperature, log());
      EXPECT_LT(relative_error(out, ref), tolerance(type))
          << type << " shape " << x.sizes() << " T " << temperature;
    }
  }
}

// The gradient against autograd on the float64 composite. Rows here are not near one-hot: for
// those, the gradient's true value is far below the rounding of the saved output in the input's
// dtype (torch's own composite has the same limit); the next test covers them.
TEST_P(SoftmaxOps, GradientsMatchAutogradOnComposite) {
  int seed = 100;
  for (at::ScalarType type : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (const auto& shape : std::vector<std::vector<int64_t>>{{4, 9}, {2, 3, 513}, {3, 9000}}) {
      const double temperature = seed % 2 ? 2.0 : 0.7;
      const at::Tensor x = logits(shape, type, device(), ++seed, /*outliers=*/false).requires_grad_(true);
      const at::Tensor upstream = torch::randn(shape, torch::kDouble).to(type).to(device());
      const at::Tensor grad = torch::autograd::grad({run(x, temperature)}, {x}, {upstream})[0];
      EXPECT_EQ(grad.scalar_type(), type);
      const at::Tensor x64 = x.detach().to(at::kDouble).requires_grad_(true);
      const at::Tensor ref =
          torch::autograd::grad({composite(x64, temperature, log())}, {x64}, {upstream.to(at::kDouble)})[0];
      EXPECT_LT(relative_error(grad, ref), tolerance(type)) << type << " shape " << x.sizes();
    }
  }
}

// With outliers (near one-hot rows), against the spec's backward formula in float64 applied to
// the output the op saved (rounded to the input's dtype).
TEST_P(SoftmaxOps, GradientsMatchFloat64FormulaOnSavedOutput) {
  int seed = 200;
  for (at::ScalarType type : {at::kFloat, at::kDouble, at::kBFloat16}) {
    for (const auto& shape : std::vector<std::vector<int64_t>>{{4, 9}, {2, 3, 513}, {3, 9000}}) {
      const double temperature = seed % 2 ? 1.0 : 0.3;
      const at::Tensor x = logits(shape, type, device(), ++seed).requires_grad_(true);
      const at::Tensor out = run(x, temperature);
      const at::Tensor upstream = torch::randn(shape, torch::kDouble).to(type).to(device());
      const at::Tensor grad = torch::autograd::grad({out}, {x}, {upstream})[0];
      const at::Tensor y = out.detach().to(at::kDouble);
      const at::Tensor dy = upstream.to(at::kDouble);
      const at::Tensor ref = log() ? (dy - y.exp() * dy.sum(-1, true)) / temperature
                                   : y * (dy - (dy * y).sum(-1, true)) / temperature;
      EXPECT_LT(relative_error(grad, ref), tolerance(type)) << type << " shape " << x.sizes();
    }
  }
}

TEST_P(SoftmaxOps, BackwardScalesWithGradOutputAndAccumulates) {
  const at::Tensor x = logits({6, 50}, at::kDouble, device(), 7).requires_grad_(true);
  const at::Tensor w1 = torch::randn({6, 50}, torch::kDouble).to(device());
  const at::Tensor w2 = torch::randn({6, 50}, torch::kDouble).to(device());
  (run(x, 3.0) * w1).sum().backward();
  (run(x, 3.0) * w2 * 2.5).sum().backward();  // accumulates into x.grad()
  const at::Tensor x64 = x.detach().clone().requires_grad_(true);
  (composite(x64, 3.0, log()) * (w1 + 2.5 * w2)).sum().backward();
  EXPECT_LT(relative_error(x.grad(), x64.grad()), 1e-12);
  EXPECT_GT(x.grad().abs().max().item<double>(), 1e-6);
}

TEST_P(SoftmaxOps, NonContiguousInputsGiveTheContiguousResult) {
  const at::Tensor base = logits({8, 6, 40}, at::kFloat, device(), 11);
  const std::vector<at::Tensor> views = {
      base.transpose(0, 1),                              // leading dims do not collapse: copied
      base.narrow(2, 3, 31),                             // rows with a stride > V
      base.select(1, 2),                                 // strided rows
      base.narrow(0, 0, 1).expand({5, 6, 40}),           // stride-0 rows
      base.transpose(1, 2),                              // last dim not unit-stride
      base.narrow(2, 1, 33).narrow(0, 1, 5),             // misaligned row starts
  };
  for (const at::Tensor& v : views) {
    const at::Tensor out = run(v, 1.5);
    EXPECT_TRUE(torch::equal(out, run(v.contiguous(), 1.5))) << "view of shape " << v.sizes();
    EXPECT_LT(relative_error(out, composite(v.to(at::kDouble), 1.5, log())), 5e-6);
    // Gradient through a view lands in the view's layout.
    const at::Tensor leaf = v.detach().clone().requires_grad_(true);
    const at::Tensor g = torch::autograd::grad({run(leaf, 1.5)}, {leaf}, {torch::ones_like(leaf)})[0];
    EXPECT_EQ(g.sizes(), v.sizes());
  }
  // A non-contiguous upstream gradient.
  const at::Tensor x = logits({7, 33}, at::kFloat, device(), 12).requires_grad_(true);
  const at::Tensor upstream = torch::randn({33, 7}).to(device()).t();
  const at::Tensor grad = torch::autograd::grad({run(x, 0.8)}, {x}, {upstream})[0];
  const at::Tensor x64 = x.detach().to(at::kDouble).requires_grad_(true);
  const at::Tensor ref = torch::autograd::grad({composite(x64, 0.8, log())}, {x64}, {upstream.to(at::kDouble)})[0];
  EXPECT_LT(relative_error(grad, ref), 5e-6);
}

TEST_P(SoftmaxOps, EmptyInputsGiveEmptyResults) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{{0, 5}, {2, 0, 7}}) {
    const at::Tensor x = torch::zeros(shape, torch::TensorOptions().device(device())).requires_grad_(true);
    const at::Tensor out = run(x, 2.0);
    EXPECT_EQ(out.sizes(), x.sizes());
    out.sum().backward();
    EXPECT_EQ(x.grad().sizes(), x.sizes());
  }
}

TEST_P(SoftmaxOps, MaskedEntriesGiveExactZerosAndNoNaN) {
  at::Tensor x = logits({16, 300}, at::kFloat, device(), 21);
  at::Tensor mask = torch::rand({16, 300}).to(device()) < 0.3;
  mask.index_put_({torch::indexing::Slice(), 0}, false);  // never a whole row
  x = x.masked_fill(mask, -std::numeric_limits<float>::infinity());
  const at::Tensor xg = x.clone().requires_grad_(true);
  const at::Tensor out = run(xg, 2.0);
  EXPECT_FALSE(out.isnan().any().item<bool>());
  if (log()) {
    EXPECT_TRUE(out.masked_select(mask).isinf().all().item<bool>());
  } else {
    EXPECT_TRUE((out.masked_select(mask) == 0).all().item<bool>());
  }
  const at::Tensor upstream = torch::randn_like(out);
  const at::Tensor grad = torch::autograd::grad({out}, {xg}, {upstream})[0];
  EXPECT_FALSE(grad.isnan().any().item<bool>());
  // softmax: masked entries get exactly 0; log-softmax: d z_j / d x_j = 1/T there, as in torch.
  if (!log()) EXPECT_TRUE((grad.masked_select(mask) == 0).all().item<bool>());
  const at::Tensor x64 = x.to(at::kDouble).requires_grad_(true);
  const at::Tensor ref = torch::autograd::grad({composite(x64, 2.0, log())}, {x64}, {upstream.to(at::kDouble)})[0];
  EXPECT_LT(relative_error(grad, ref), 5e-6);
  EXPECT_LT(relative_error(out.masked_fill(mask, 0), composite(x.to(at::kDouble), 2.0, log()).masked_fill(mask, 0)), 5e-6);
}

TEST_P(SoftmaxOps, NaNLogitsPropagateLikeTorch) {
  at::Tensor x = logits({3, 10}, at::kFloat, device(), 31);
  x.index_put_({1, 4}, std::numeric_limits<float>::quiet_NaN());
  const at::Tensor out = run(x, 1.0).cpu();
  EXPECT_TRUE(out[1].isnan().all().item<bool>());
  EXPECT_FALSE(out[0].isnan().any().item<bool>());
  EXPECT_FALSE(out[2].isnan().any().item<bool>());
}

TEST_P(SoftmaxOps, DispatcherCallMatchesCppApi) {
  const at::Tensor x = logits({4, 17}, at::kFloat, device(), 41);
  const char* name = log() ? "fusedkd::log_softmax_t" : "fusedkd::softmax_t";
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<at::Tensor(const at::Tensor&, double)>();
  EXPECT_TRUE(torch::equal(op.call(x, 2.0), run(x, 2.0)));
  // The default temperature is 1.
  EXPECT_LT(relative_error(log() ? fusedkd::log_softmax_t(x) : fusedkd::softmax_t(x), composite(x.to(at::kDouble), 1.0, log())), 5e-6);
}

TEST_P(SoftmaxOps, NoGradModeBuildsNoGraph) {
  const at::Tensor x = logits({4, 17}, at::kFloat, device(), 51).requires_grad_(true);
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(run(x, 2.0).requires_grad());
}

TEST_P(SoftmaxOps, BadInputsRaiseClearErrors) {
  const auto opts = torch::TensorOptions().device(device());
  const std::string op = log() ? "log_softmax_t" : "softmax_t";
  expect_error([&] { run(torch::zeros({3, 4}, opts.dtype(torch::kLong)), 1.0); }, {op.c_str(), "logits", "Long"});
  expect_error([&] { run(torch::zeros({3, 4}, opts.dtype(torch::kBool)), 1.0); }, {"logits", "Bool"});
  expect_error([&] { run(torch::zeros({}, opts), 1.0); }, {"logits", "at least 1 dim"});
  expect_error([&] { run(torch::zeros({3, 0}, opts), 1.0); }, {"logits", "last dim (V)"});
  for (double bad : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()})
    expect_error([&] { run(torch::zeros({3, 4}, opts), bad); }, {op.c_str(), "temperature"});
  // The backward op checks its own arguments.
  const char* backward = log() ? "fusedkd::log_softmax_t_backward" : "fusedkd::softmax_t_backward";
  const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(backward, "")
                          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  expect_error([&] { handle.call(torch::zeros({3, 5}, opts), torch::zeros({3, 4}, opts), 1.0); },
               {"grad_output", "shape"});
  expect_error([&] { handle.call(torch::zeros({3, 4}, opts), torch::zeros({3, 4}, opts), 0.0); },
               {"temperature"});
  if (FUSEDKD_WITH_CUDA && cuda_available()) {
    expect_error([&] { handle.call(torch::zeros({3, 4}), torch::zeros({3, 4}, torch::kCUDA), 1.0); },
                 {"same device"});
  }
}

TEST_P(SoftmaxOps, MetaTensorsGiveShapesOnly) {
  const at::Tensor x = torch::empty({3, 5, 11}, torch::TensorOptions().device(torch::kMeta).dtype(torch::kBFloat16));
  const at::Tensor out = run(x, 2.0);
  EXPECT_TRUE(out.is_meta());
  EXPECT_EQ(out.sizes(), x.sizes());
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
}

// The C++ API of the cache of freed large CPU outputs (torch_ext/outputs.h; its reuse and its
// settings are tested from Python, python/tests/test_outputs.py).
TEST(CpuOutputCache, ReleaseFreesTheBlocksKeptAndReturnsTheirBytes) {
  const char* huge = std::getenv("FUSEDKD_CPU_HUGE_PAGES");
  const char* capacity = std::getenv("FUSEDKD_CPU_OUTPUT_CACHE_MB");
  if ((huge && std::string(huge) == "0") || (capacity && std::string(capacity) == "0"))
    GTEST_SKIP() << "the output cache is turned off in this environment";
  fusedkd::release_cpu_output_cache();
  const std::int64_t bytes = 4096 * 4096 * 4;  // 64 MiB: above the allocator's 2 MiB threshold
  const at::Tensor x = torch::randn({4096, 4096});
  const void* first = nullptr;
  {
    const at::Tensor y = fusedkd::softmax_t(x, 2.0);
    first = y.data_ptr();
  }
  const at::Tensor again = fusedkd::softmax_t(x, 2.0);  // the block just freed
  EXPECT_EQ(again.data_ptr(), first);
  EXPECT_TRUE(torch::allclose(again, torch::softmax(x / 2.0, -1), 1e-5, 1e-7));
  EXPECT_EQ(fusedkd::release_cpu_output_cache(), 0);  // the one block is in use
  {
    const at::Tensor y = fusedkd::softmax_t(x * 2, 2.0);  // a second block while `again` lives
  }
  EXPECT_GE(fusedkd::release_cpu_output_cache(), bytes);
  EXPECT_EQ(fusedkd::release_cpu_output_cache(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    All, SoftmaxOps,
    ::testing::Combine(::testing::Bool(), ::testing::Values(std::string("cpu"), std::string("cuda"))),
    [](const ::testing::TestParamInfo<std::tuple<bool, std::string>>& info) {
      return std::string(std::get<0>(info.param) ? "log_softmax_t" : "softmax_t") + "_" +
             std::get<1>(info.param);
    });

}  // namespace
