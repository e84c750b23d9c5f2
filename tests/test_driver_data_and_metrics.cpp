// The Fashion-MNIST study's data and metrics (driver/): the IDX reader, the data loader, the split,
// the label budget and the random shift, the classification metrics against hand-computed values.
#include <gtest/gtest.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "driver_test_support.h"
#include "fashion_mnist.h"
#include "metrics.h"
#include "splits.h"

namespace F = torch::nn::functional;
namespace demo = fusedkd::demo;

namespace {

using fusedkd::testing::expect_error_containing;
using fusedkd::testing::have_real_data;

std::string temp_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "fusedkd_driver_" + name;
  std::filesystem::create_directories(dir);
  return dir;
}

std::vector<unsigned char> idx_bytes(unsigned char type, const std::vector<std::uint32_t>& dims,
                                     const std::vector<unsigned char>& data) {
  std::vector<unsigned char> out = {0, 0, type, static_cast<unsigned char>(dims.size())};
  for (const std::uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<unsigned char>(d >> shift));
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

void write_plain(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_gzip(const std::string& path, const std::vector<unsigned char>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned int>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
}

// ---------------------------------------------------------------- data

TEST(IdxReader, ReadsPlainAndGzipFiles) {
  const std::string dir = temp_dir("idx");
  const std::vector<unsigned char> values = {0, 1, 2, 250, 254, 255};
  write_plain(dir + "/plain", idx_bytes(0x08, {2, 3}, values));
  write_gzip(dir + "/packed.gz", idx_bytes(0x08, {2, 3}, values));
  for (const std::string name : {"plain", "packed.gz"}) {
    const demo::IdxArray a = demo::read_idx(dir + "/" + name);
    EXPECT_EQ(a.dims, (std::vector<std::int64_t>{2, 3})) << name;
    EXPECT_EQ(a.data, (std::vector<std::uint8_t>{0, 1, 2, 250, 254, 255})) << name;
  }
}

TEST(IdxReader, RejectsBadFiles) {
  const std::string dir = temp_dir("idx_bad");
  write_plain(dir + "/magic", {1, 2, 8, 1, 0, 0, 0, 1, 7});
  write_plain(dir + "/float", idx_bytes(0x0D, {1}, {0, 0, 0, 0}));
  write_plain(dir + "/short", idx_bytes(0x08, {10}, {1, 2, 3}));
  write_plain(dir + "/header", {0, 0, 8, 2, 0, 0});
  write_plain(dir + "/empty", {});
  expect_error_containing([&] { demo::read_idx(dir + "/magic"); }, "bad magic number");
  expect_error_containing([&] { demo::read_idx(dir + "/float"); }, "not unsigned bytes");
  expect_error_containing([&] { demo::read_idx(dir + "/short"); }, "fewer values than its header says");
  expect_error_containing([&] { demo::read_idx(dir + "/header"); }, "ends inside its header");
  expect_error_containing([&] { demo::read_idx(dir + "/empty"); }, "empty");
  expect_error_containing([&] { demo::read_idx(dir + "/missing"); }, "cannot open");
}

// Writes a tiny Fashion-MNIST-shaped set: `train` and `test` images with labels 0, 1, 2, ...
void write_tiny_set(const std::string& dir, int train, int test, int label_count_delta = 0, int bad_label = -1) {
  for (const auto& [prefix, n] : {std::pair<std::string, int>{"train", train}, {"t10k", test}}) {
    std::vector<unsigned char> pixels(static_cast<std::size_t>(n) * 28 * 28);
    for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i % 256);
    std::vector<unsigned char> labels(n + label_count_delta);
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<unsigned char>(i % 10);
    if (bad_label >= 0 && !labels.empty()) labels[0] = static_cast<unsigned char>(bad_label);
    write_gzip(dir + "/" + prefix + "-images-idx3-ubyte.gz",
               idx_bytes(0x08, {static_cast<std::uint32_t>(n), 28, 28}, pixels));
    write_plain(dir + "/" + prefix + "-labels-idx1-ubyte",
                idx_bytes(0x08, {static_cast<std::uint32_t>(labels.size())}, labels));
  }
}

TEST(FashionMnistLoader, NormalisesImagesAndKeepsLabels) {
  const std::string dir = temp_dir("tiny");
  write_tiny_set(dir, 3, 2);
  const demo::FashionMnist data = demo::load_fashion_mnist(dir);
  ASSERT_EQ(data.train.images.sizes(), (std::vector<std::int64_t>{3, 1, 28, 28}));
  ASSERT_EQ(data.test.images.sizes(), (std::vector<std::int64_t>{2, 1, 28, 28}));
  EXPECT_EQ(data.train.images.scalar_type(), at::kFloat);
  EXPECT_TRUE(torch::equal(data.train.labels, torch::tensor({0, 1, 2}, torch::kLong)));
  // Pixel p becomes (p / 255 - mean) / std: the map is affine, so two pixels fix it.
  const at::Tensor first = data.train.images[0].flatten();  // pixel values 0, 1, ..., 255, 0, ...
  const double x0 = first[0].item<double>();
  const double x1 = first[255].item<double>() - x0;
  const double std = 1.0 / x1;
  EXPECT_NEAR(std, 0.35302, 1e-4);
  EXPECT_NEAR(-x0 * std, 0.28604, 1e-4);
}

TEST(FashionMnistLoader, RejectsInconsistentSets) {
  const std::string a = temp_dir("count"), b = temp_dir("label"), c = temp_dir("absent");
  write_tiny_set(a, 3, 2, /*label_count_delta=*/1);
  write_tiny_set(b, 3, 2, 0, /*bad_label=*/10);
  expect_error_containing([&] { demo::load_fashion_mnist(a); }, "has 3 images but 4 labels");
  expect_error_containing([&] { demo::load_fashion_mnist(b); }, "label outside 0..9: 10");
  expect_error_containing([&] { demo::load_fashion_mnist(c); }, "dataset-fashion-mnist");
}

TEST(FashionMnistLoader, DirectoryFromArgumentEnvironmentOrDebian) {
  EXPECT_EQ(demo::fashion_mnist_dir("/given"), "/given");
  setenv("FUSEDKD_FASHION_MNIST", "/from/env", 1);
  EXPECT_EQ(demo::fashion_mnist_dir(), "/from/env");
  unsetenv("FUSEDKD_FASHION_MNIST");
  EXPECT_EQ(demo::fashion_mnist_dir(), "/usr/share/datasets/fashion-mnist");
}

// The real files (Debian's dataset-fashion-mnist): sizes, the balanced classes the dataset is
// published with, and the normalisation constants (training pixels get mean 0 and std 1).
TEST(FashionMnistLoader, RealDataset) {
  if (!have_real_data()) GTEST_SKIP() << "skipped: Fashion-MNIST not found in " << demo::fashion_mnist_dir();
  const demo::FashionMnist data = demo::load_fashion_mnist(demo::fashion_mnist_dir());
  ASSERT_EQ(data.train.labels.size(0), 60000);
  ASSERT_EQ(data.test.labels.size(0), 10000);
  EXPECT_TRUE(torch::equal(torch::bincount(data.train.labels), torch::full({10}, 6000, torch::kLong)));
  EXPECT_TRUE(torch::equal(torch::bincount(data.test.labels), torch::full({10}, 1000, torch::kLong)));
  const at::Tensor x = data.train.images.to(at::kDouble);
  EXPECT_NEAR(x.mean().item<double>(), 0.0, 1e-6);
  EXPECT_NEAR(x.std(/*unbiased=*/false).item<double>(), 1.0, 1e-6);
}

// ---------------------------------------------------------------- metrics

// Logits whose argmax is `predicted`.
at::Tensor logits_for(const std::vector<std::int64_t>& predicted, int classes) {
  at::Tensor l = torch::zeros({static_cast<std::int64_t>(predicted.size()), classes});
  for (std::size_t i = 0; i < predicted.size(); ++i) l[i][predicted[i]] = 3.0;
  return l;
}

TEST(ClassificationMetrics, MatchHandComputedValues) {
  // true 0 0 1 1 2 2, predicted 0 1 1 1 0 2: confusion [[1 1 0] [0 2 0] [1 0 1]].
  const at::Tensor labels = torch::tensor({0, 0, 1, 1, 2, 2}, torch::kLong);
  const at::Tensor logits = logits_for({0, 1, 1, 1, 0, 2}, 3);
  const demo::ClassificationMetrics m = demo::classification_metrics(logits, labels);
  EXPECT_EQ(m.confusion, (std::vector<std::int64_t>{1, 1, 0, 0, 2, 0, 1, 0, 1}));
  EXPECT_DOUBLE_EQ(m.accuracy, 4.0 / 6.0);
  const std::vector<double> precision = {0.5, 2.0 / 3.0, 1.0}, recall = {0.5, 1.0, 0.5};
  const std::vector<double> f1 = {0.5, 0.8, 2.0 / 3.0};
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(m.precision[c], precision[c], 1e-15) << c;
    EXPECT_NEAR(m.recall[c], recall[c], 1e-15) << c;
    EXPECT_NEAR(m.f1[c], f1[c], 1e-15) << c;
  }
  EXPECT_NEAR(m.macro_precision, (0.5 + 2.0 / 3.0 + 1.0) / 3.0, 1e-15);
  EXPECT_NEAR(m.macro_recall, 2.0 / 3.0, 1e-15);
  EXPECT_NEAR(m.macro_f1, (0.5 + 0.8 + 2.0 / 3.0) / 3.0, 1e-15);
  EXPECT_NEAR(m.nll, F::cross_entropy(logits.to(torch::kDouble), labels).item<double>(), 1e-12);
}

TEST(ClassificationMetrics, ClassNeverPredictedHasZeroPrecision) {
  const demo::ClassificationMetrics m =
      demo::classification_metrics(logits_for({0, 0, 0}, 2), torch::tensor({0, 1, 0}, torch::kLong));
  EXPECT_EQ(m.precision[1], 0.0);
  EXPECT_EQ(m.f1[1], 0.0);
  EXPECT_NEAR(m.precision[0], 2.0 / 3.0, 1e-15);
  EXPECT_EQ(m.recall[0], 1.0);
}

TEST(ClassificationMetrics, ExpectedCalibrationError) {
  // Every row 90% confident in class 0: ECE = |accuracy - 0.9|.
  const at::Tensor logits = torch::log(torch::tensor({0.9, 0.1}, torch::kDouble)).repeat({10, 1});
  std::vector<std::int64_t> y(10, 0);
  for (const int wrong : {1, 5}) {  // 9 right, then 5 right
    for (int i = 0; i < wrong; ++i) y[i] = 1;
    const double accuracy = (10.0 - wrong) / 10.0;
    EXPECT_NEAR(demo::classification_metrics(logits, torch::tensor(y, torch::kLong)).ece, std::fabs(accuracy - 0.9),
                1e-12);
  }
  // Two bins: confidence 0.9 (all right) and 0.6 (half right): (2/4)*0.1 + (2/4)*0.1.
  const at::Tensor mixed = torch::log(torch::tensor({0.9, 0.1, 0.9, 0.1, 0.6, 0.4, 0.6, 0.4}, torch::kDouble)).view({4, 2});
  EXPECT_NEAR(demo::classification_metrics(mixed, torch::tensor({0, 0, 0, 1}, torch::kLong)).ece, 0.1, 1e-12);
}

TEST(ClassificationMetrics, EmptyAndBadInput) {
  const demo::ClassificationMetrics m =
      demo::classification_metrics(torch::zeros({0, 10}), torch::zeros({0}, torch::kLong));
  EXPECT_EQ(m.accuracy, 0.0);
  EXPECT_EQ(m.confusion.size(), 100u);
  expect_error_containing([] { demo::classification_metrics(torch::zeros({2, 3}), torch::tensor({0, 3}, torch::kLong)); },
                          "label 3 outside [0, 3)");
  expect_error_containing([] { demo::classification_metrics(torch::zeros({2, 3}), torch::zeros({3}, torch::kLong)); },
                          "must be [N, C]");
}

// ---------------------------------------------------------------- split, label budget, shifts

TEST(Split, StratifiedDisjointAndFixedBySeed) {
  // 10 classes of unequal size, in a scrambled order.
  const at::Tensor labels = torch::randperm(1000, torch::TensorOptions().dtype(torch::kLong)).remainder(10);
  const demo::TrainValidation a = demo::stratified_split(labels, 20, 7, 10);
  ASSERT_EQ(a.validation.size(0), 200);
  ASSERT_EQ(a.train.size(0), 800);
  EXPECT_TRUE(torch::equal(torch::bincount(labels.index_select(0, a.validation), {}, 10), torch::full({10}, 20, torch::kLong)));
  // Disjoint and covering: every position exactly once.
  EXPECT_TRUE(torch::equal(std::get<0>(torch::cat({a.train, a.validation}).sort()), torch::arange(1000)));
  const demo::TrainValidation b = demo::stratified_split(labels, 20, 7, 10);
  EXPECT_TRUE(torch::equal(a.validation, b.validation));
  EXPECT_TRUE(torch::equal(a.train, b.train));
  EXPECT_FALSE(torch::equal(a.validation, demo::stratified_split(labels, 20, 8, 10).validation));
  expect_error_containing([&] { demo::stratified_split(labels, 100, 7, 10); }, "too few to hold out 100");
}

TEST(Split, LabelBudgetTakesItsShareOfEveryClass) {
  const at::Tensor labels = torch::arange(5000, torch::kLong).remainder(10);
  for (const std::int64_t budget : {1000, 1005, 10, 3}) {
    const at::Tensor chosen = demo::label_budget(labels, budget, 3, 10);
    ASSERT_EQ(chosen.size(0), budget);
    EXPECT_EQ(std::get<0>(at::_unique(chosen)).size(0), budget);  // no position twice
    const at::Tensor per_class = torch::bincount(labels.index_select(0, chosen), {}, 10);
    for (int c = 0; c < 10; ++c)
      EXPECT_EQ(per_class[c].item<std::int64_t>(), budget / 10 + (c < budget % 10 ? 1 : 0)) << budget << " " << c;
    EXPECT_TRUE(torch::equal(chosen, demo::label_budget(labels, budget, 3, 10)));
  }
  EXPECT_FALSE(torch::equal(demo::label_budget(labels, 1000, 3, 10), demo::label_budget(labels, 1000, 4, 10)));
  EXPECT_TRUE(torch::equal(demo::label_budget(labels, 5000, 3, 10), torch::arange(5000)));
  const at::Tensor skewed = torch::cat({torch::arange(10, torch::kLong), torch::zeros({10}, torch::kLong)});
  expect_error_containing([&] { demo::label_budget(skewed, 15, 3, 10); }, "class 1 has 1 images, fewer than the 2");
  expect_error_containing([&] { demo::label_budget(labels, 0, 3, 10); }, "at least 1");
}

TEST(Split, RandomShiftMovesEachImageWithinTheBound) {
  const at::Tensor images = torch::rand({6, 1, 8, 8}) + 1.0;  // never the background value
  at::Generator g = at::detail::createCPUGenerator(5);
  EXPECT_TRUE(torch::equal(demo::random_shift(images, 0, -1.0, g), images));
  const at::Tensor moved = demo::random_shift(images, 2, -1.0, g);
  ASSERT_EQ(moved.sizes(), images.sizes());
  const at::Tensor padded = torch::constant_pad_nd(images, {2, 2, 2, 2}, -1.0);
  for (int i = 0; i < 6; ++i) {
    int matches = 0;
    for (int dy = 0; dy <= 4; ++dy)
      for (int dx = 0; dx <= 4; ++dx)
        matches += torch::equal(moved[i], padded[i].narrow(1, dy, 8).narrow(2, dx, 8)) ? 1 : 0;
    EXPECT_EQ(matches, 1) << i;
  }
}

}  // namespace
