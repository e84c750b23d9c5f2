// The Fashion-MNIST study's parts (driver/): the IDX reader, the data loader, the split and the
// label budget, the classification metrics against hand-computed values, each method's loss against
// its composite written with LibTorch, the training loop's checkpoint selection, the study's
// protocol (the test set never steers a choice) and its reports.
#include <gtest/gtest.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "distill.h"
#include "fashion_mnist.h"
#include "metrics.h"
#include "report.h"
#include "splits.h"
#include "study.h"

namespace F = torch::nn::functional;
namespace demo = fusedkd::demo;

namespace {

std::string temp_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "fusedkd_driver_" + name;
  std::filesystem::create_directories(dir);
  return dir;
}

// The Fashion-MNIST files where the demo looks for them (Debian's package, or the environment's).
bool have_real_data() {
  const std::string dir = demo::fashion_mnist_dir();
  return std::filesystem::exists(dir + "/train-images-idx3-ubyte.gz") ||
         std::filesystem::exists(dir + "/train-images-idx3-ubyte");
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

template <typename Fn>
void expect_error_containing(Fn&& fn, const std::string& text) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one mentioning '" << text << "'";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
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

// ---------------------------------------------------------------- the methods' losses

struct LossInputs {
  at::Tensor s, t, y, fs, ft, w, b;
};

LossInputs loss_inputs(std::int64_t rows = 16) {
  torch::manual_seed(3);
  LossInputs in;
  in.s = torch::randn({rows, 10}, torch::kDouble) * 3;
  in.t = torch::randn({rows, 10}, torch::kDouble) * 3;
  in.y = torch::randint(0, 10, {rows}, torch::kLong);
  in.fs = torch::randn({rows, demo::kStudentFeatureChannels, 7, 7}, torch::kDouble).relu();
  in.ft = torch::randn({rows, demo::kTeacherFeatureChannels, 7, 7}, torch::kDouble).relu();
  in.w = torch::randn({demo::kTeacherFeatureChannels, demo::kStudentFeatureChannels}, torch::kDouble);
  in.b = torch::randn({demo::kTeacherFeatureChannels}, torch::kDouble);
  return in;
}

at::Tensor loss_of(const std::string& method, const demo::LossSetting& setting, const LossInputs& in,
                   const at::Tensor& labels, bool all_labelled) {
  demo::Batch batch;
  batch.student_logits = in.s;
  batch.teacher_logits = in.t;
  batch.labels = labels;
  batch.all_labelled = all_labelled;
  batch.student_features = in.fs;
  batch.teacher_features = in.ft;
  batch.regressor_weight = in.w;
  batch.regressor_bias = in.b;
  return demo::student_loss(demo::find_method(method), setting, batch);
}

// D at temperature T, written the way a user would: batchmean KL, the mean-over-elements MSE.
at::Tensor kl_composite(const at::Tensor& s, const at::Tensor& t, double T) {
  return F::kl_div(F::log_softmax(s / T, 1), F::softmax(t / T, 1), F::KLDivFuncOptions().reduction(torch::kBatchMean));
}
at::Tensor mse_composite(const at::Tensor& s, const at::Tensor& t, double T) {
  return F::mse_loss(F::softmax(s / T, 1), F::softmax(t / T, 1));
}

void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  EXPECT_NEAR(got.item<double>(), want.item<double>(), 1e-10 * std::max(1.0, std::fabs(want.item<double>()))) << what;
}

TEST(StudentLoss, BothFormsWithEveryLabelEqualTheirComposites) {
  const LossInputs in = loss_inputs();
  const at::Tensor ce = F::cross_entropy(in.s, in.y);
  for (const double T : {1.0, 4.0})
    for (const double alpha : {0.5, 0.9}) {
      const demo::LossSetting balanced{T, alpha, demo::LossForm::Balanced}, seed{T, alpha, demo::LossForm::Seed};
      const std::string at = " T=" + std::to_string(T) + " alpha=" + std::to_string(alpha);
      expect_close(loss_of("kd_kl", balanced, in, in.y, true),
                   (1 - alpha) * ce + alpha * T * T * kl_composite(in.s, in.t, T), "balanced kl" + at);
      // Balanced MSE: the mean over elements times V (a per-row sum, the KL's scale).
      expect_close(loss_of("kd_mse", balanced, in, in.y, true),
                   (1 - alpha) * ce + alpha * T * T * 10.0 * mse_composite(in.s, in.t, T), "balanced mse" + at);
      expect_close(loss_of("kd_kl", seed, in, in.y, true), ce + alpha * kl_composite(in.s, in.t, T), "seed kl" + at);
      expect_close(loss_of("kd_mse", seed, in, in.y, true), ce + alpha * mse_composite(in.s, in.t, T), "seed mse" + at);
      expect_close(loss_of("kd_reverse_kl", balanced, in, in.y, true),
                   (1 - alpha) * ce + alpha * T * T * kl_composite(in.t, in.s, T), "reverse kl" + at);
    }
}

// The transfer set: the soft term over every row, the hard term over the labelled rows only.
TEST(StudentLoss, TransferSetIsSoftOnEveryRowAndHardOnTheLabelledOnes) {
  LossInputs in = loss_inputs();
  at::Tensor y = in.y.clone();
  y.narrow(0, 0, 11).fill_(demo::kUnlabelled);  // 5 labelled rows of 16
  const demo::LossSetting setting{4.0, 0.9, demo::LossForm::Balanced};
  in.s.requires_grad_(true);
  const at::Tensor fused = loss_of("kd_kl", setting, in, y, false);
  const at::Tensor s = in.s.detach().clone().requires_grad_(true);
  const at::Tensor composite = 0.1 * F::cross_entropy(s, y) + 0.9 * 16.0 * kl_composite(s, in.t, 4.0);
  expect_close(fused, composite, "transfer kl");
  const at::Tensor g_fused = torch::autograd::grad({fused}, {in.s})[0];
  const at::Tensor g_composite = torch::autograd::grad({composite}, {s})[0];
  EXPECT_TRUE(torch::allclose(g_fused, g_composite, 1e-10, 1e-12));
  // The seed's form on a transfer set, and a batch without a single label (hard term 0, not NaN).
  const demo::LossSetting seed_form{2.0, 0.5, demo::LossForm::Seed};
  expect_close(loss_of("kd_mse", seed_form, in, y, false).detach(),
               F::cross_entropy(in.s.detach(), y) + 0.5 * mse_composite(in.s.detach(), in.t, 2.0), "seed mse");
  const at::Tensor none = torch::full({16}, demo::kUnlabelled, torch::kLong);
  expect_close(loss_of("kd_kl", setting, in, none, false).detach(), 0.9 * 16.0 * kl_composite(in.s.detach(), in.t, 4.0),
               "no labels");
}

TEST(StudentLoss, ControlsEqualTheirComposites) {
  const LossInputs in = loss_inputs();
  at::Tensor y = in.y.clone();
  y.narrow(0, 0, 4).fill_(demo::kUnlabelled);
  const demo::LossSetting any{};
  expect_close(loss_of("ce", any, in, in.y, true), F::cross_entropy(in.s, in.y), "ce");
  // Label smoothing from a fused kd_loss with a uniform teacher: equal to PyTorch's own, also with
  // rows to ignore.
  for (const at::Tensor& labels : {in.y, y})
    expect_close(loss_of("ce_ls", any, in, labels, true),
                 F::cross_entropy(in.s, labels, F::CrossEntropyFuncOptions().label_smoothing(0.1)), "ce_ls");
  // Pseudo-labels: the teacher's argmax where no label is given.
  const at::Tensor filled = torch::where(y == demo::kUnlabelled, in.t.argmax(1), y);
  expect_close(loss_of("pseudo", any, in, y, false), F::cross_entropy(in.s, filled), "pseudo");
}

TEST(StudentLoss, FeatureMethodsAddTheirTerm) {
  const LossInputs in = loss_inputs();
  const auto attention_map = [](const at::Tensor& x) {
    return F::normalize(x.pow(2).mean(1).flatten(1), F::NormalizeFuncOptions().dim(1));
  };
  const auto gram = [](const at::Tensor& x) {
    const at::Tensor f = x.flatten(1);
    return F::normalize(f.mm(f.t()), F::NormalizeFuncOptions().dim(1));
  };
  const demo::LossSetting setting{4.0, 0.9, demo::LossForm::Balanced};
  const at::Tensor kl = loss_of("kd_kl", setting, in, in.y, true), mse = loss_of("kd_mse", setting, in, in.y, true);
  expect_close(loss_of("kd_mse_hint", setting, in, in.y, true),
               mse + F::mse_loss(torch::conv2d(in.fs, in.w.view({64, 16, 1, 1}), in.b), in.ft), "hint");
  expect_close(loss_of("kd_kl_attention", setting, in, in.y, true),
               kl + 1000.0 * F::mse_loss(attention_map(in.fs), attention_map(in.ft)), "attention");
  expect_close(loss_of("kd_kl_similarity", setting, in, in.y, true),
               kl + 3000.0 * (gram(in.fs) - gram(in.ft)).pow(2).sum() / (16.0 * 16.0), "similarity");
  expect_error_containing([] { demo::find_method("kd_nope"); }, "kd_kl_similarity");
}

// ---------------------------------------------------------------- training loop and protocol

// The loop keeps the checkpoint with the best validation accuracy (the earliest of equals) and
// restores its parameters.
TEST(Training, KeepsTheBestValidationCheckpoint) {
  const at::Tensor w = torch::zeros({1}, torch::kDouble).requires_grad_(true);
  demo::TrainOptions options;
  options.steps = 10;
  options.evaluations = 5;
  options.learning_rate = 0.1;
  const std::vector<double> accuracy = {0.5, 0.9, 0.7, 0.9, 0.8};
  std::size_t call = 0;
  std::vector<double> w_at_check;
  const auto step = [&](const at::Tensor&) { return (w - 100.0).pow(2).sum(); };  // w rises every step
  const auto validate = [&] {
    w_at_check.push_back(w.item<double>());
    return accuracy[call++];
  };
  const demo::TrainLog log = demo::train_steps({w}, 7, options, step, validate);
  ASSERT_EQ(log.checkpoints.size(), 5u);
  EXPECT_EQ(log.checkpoints[0].step, 2);
  EXPECT_EQ(log.checkpoints[4].step, 10);
  EXPECT_EQ(log.best_step, 4);
  EXPECT_EQ(log.best_validation_accuracy, 0.9);
  EXPECT_EQ(w.item<double>(), w_at_check[1]);
  EXPECT_NE(w_at_check[1], w_at_check[4]);
}

// A tiny study on real images: teacher logits stand in for a trained teacher's (the labels, made
// noisy), students are MLPs trained for a few steps.
demo::StudyData tiny_study_data() {
  demo::FashionMnist real = demo::load_fashion_mnist(demo::fashion_mnist_dir());
  demo::StudyData d;
  d.train = {real.train.images.narrow(0, 0, 2000), real.train.labels.narrow(0, 0, 2000)};
  d.validation = {real.train.images.narrow(0, 2000, 500), real.train.labels.narrow(0, 2000, 500)};
  d.test = {real.test.images.narrow(0, 0, 500), real.test.labels.narrow(0, 0, 500)};
  torch::manual_seed(9);
  d.teacher_logits = 4.0 * F::one_hot(d.train.labels, 10).to(torch::kFloat) + torch::randn({2000, 10});
  return d;
}

demo::StudyOptions tiny_study_options() {
  demo::StudyOptions o;
  o.budgets = {100, 0};
  o.methods = {"ce", "ce_ls", "pseudo", "kd_kl"};
  o.temperatures = {1, 4};
  o.alphas = {0.5, 0.9};
  o.seeds = 2;
  o.train.steps = 30;
  o.train.evaluations = 3;
  o.train.batch_size = 64;
  return o;
}

TEST(Study, PlansCellsAndPools) {
  demo::StudyOptions o = tiny_study_options();
  o.students = {demo::StudentKind::Mlp, demo::StudentKind::Cnn};
  o.methods = {"ce", "pseudo", "kd_kl", "kd_kl_attention"};
  const std::vector<demo::PlannedCell> cells = demo::plan_cells(o, 2000);
  ASSERT_EQ(cells.size(), 6u);  // per student: 100 same, 100 transfer, 2000 (all)
  const auto names = [](const demo::PlannedCell& p) {
    std::string s;
    for (const demo::Method& m : p.methods) s += m.name + " ";
    return s;
  };
  EXPECT_EQ(demo::cell_name(cells[0].cell), "mlp, 100 labels, same images");
  EXPECT_EQ(names(cells[0]), "ce kd_kl ");
  EXPECT_EQ(names(cells[1]), "ce pseudo kd_kl ");  // pseudo-labels need unlabelled images
  EXPECT_EQ(cells[2].cell.regime, demo::Regime::Full);
  EXPECT_EQ(cells[2].cell.budget, 2000);
  EXPECT_EQ(names(cells[4]), "ce pseudo kd_kl kd_kl_attention ");  // feature maps: CNN only

  const at::Tensor labels = torch::arange(2000, torch::kLong).remainder(10);
  const demo::Pool transfer = demo::make_pool(cells[1].cell, demo::find_method("kd_kl"), labels, 1);
  EXPECT_EQ(transfer.index.size(0), 2000);
  EXPECT_FALSE(transfer.all_labelled);
  const at::Tensor given = transfer.labels != demo::kUnlabelled;
  EXPECT_EQ(given.sum().item<std::int64_t>(), 100);
  EXPECT_TRUE(torch::equal(transfer.labels.masked_select(given), labels.masked_select(given)));
  const demo::Pool control = demo::make_pool(cells[1].cell, demo::find_method("ce"), labels, 1);
  EXPECT_TRUE(torch::equal(control.index, given.nonzero().flatten()));  // the same labelled images
  EXPECT_TRUE(control.all_labelled);
}

// Every choice is made without the test set: poisoning its labels changes the test figures and
// nothing else.
TEST(Study, SelectionNeverReadsTheTestSet) {
  if (!have_real_data()) GTEST_SKIP() << "skipped: Fashion-MNIST not found";
  const demo::StudyData clean = tiny_study_data();
  demo::StudyData poisoned = clean;
  poisoned.test.labels = (clean.test.labels + 1).remainder(10);
  const demo::StudyOptions options = tiny_study_options();
  const demo::StudyResult a = demo::run_study(options, clean, 0.9);
  const demo::StudyResult b = demo::run_study(options, poisoned, 0.9);
  ASSERT_EQ(a.arms.size(), 10u);  // 100 same: ce ce_ls kd_kl; transfer: + pseudo; all: ce ce_ls kd_kl
  ASSERT_EQ(a.arms.size(), b.arms.size());
  EXPECT_EQ(a.runs_trained, b.runs_trained);
  EXPECT_EQ(a.runs_trained, 25);  // controls shared by the two regimes of a budget; seed 0 of the chosen point reused
  for (std::size_t i = 0; i < a.arms.size(); ++i) {
    const demo::ArmResult &x = a.arms[i], &y = b.arms[i];
    EXPECT_EQ(x.chosen.temperature, y.chosen.temperature) << i;
    EXPECT_EQ(x.chosen.alpha, y.chosen.alpha) << i;
    ASSERT_EQ(x.grid.size(), y.grid.size());
    for (std::size_t g = 0; g < x.grid.size(); ++g)
      EXPECT_EQ(x.grid[g].validation_accuracy, y.grid[g].validation_accuracy) << i << " " << g;
    ASSERT_EQ(x.runs.size(), 2u);
    for (std::size_t r = 0; r < x.runs.size(); ++r) {
      EXPECT_EQ(x.runs[r].log.best_step, y.runs[r].log.best_step);
      EXPECT_EQ(x.runs[r].log.best_validation_accuracy, y.runs[r].log.best_validation_accuracy);
    }
    EXPECT_GT(x.accuracy_mean, y.accuracy_mean + 0.2) << i;  // the test figures did see the poison
  }
  // Paired differences and the goal check, from the runs.
  const demo::ArmResult& ce = a.arms[0];
  const demo::ArmResult& kd = a.arms[2];
  ASSERT_EQ(kd.method.name, "kd_kl");
  EXPECT_NEAR(kd.vs_ce.mean,
              ((kd.runs[0].test.accuracy - ce.runs[0].test.accuracy) + (kd.runs[1].test.accuracy - ce.runs[1].test.accuracy)) / 2,
              1e-15);
  EXPECT_NEAR(kd.gap_closed, kd.vs_ce.mean / (0.9 - ce.accuracy_mean), 1e-12);
}

TEST(Study, GoalNeedsEverySeedTwoDeviationsAndAThirdOfTheGap) {
  demo::ArmResult a;
  a.vs_ce = {true, 0.03, 0.01, 3, 3};
  a.has_gap = true;
  a.gap_closed = 0.4;
  EXPECT_TRUE(demo::meets_goal(a));
  a.vs_ce.std = 0.016;  // 0.03 < 2 * 0.016
  EXPECT_FALSE(demo::meets_goal(a));
  a.vs_ce = {true, 0.03, 0.01, 2, 3};
  EXPECT_FALSE(demo::meets_goal(a));
  a.vs_ce = {true, 0.03, 0.01, 3, 3};
  a.gap_closed = 0.29;
  EXPECT_FALSE(demo::meets_goal(a));
}

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(Report, TablesJsonAndPlot) {
  if (!have_real_data()) GTEST_SKIP() << "skipped: Fashion-MNIST not found";
  const demo::StudyData data = tiny_study_data();
  const demo::StudyOptions options = tiny_study_options();
  const demo::StudyResult result = demo::run_study(options, data, 0.9);
  demo::StudySetup setup;
  setup.command = "fusedkd_demo --a \"quoted\" <arg>";
  setup.options = options;
  setup.teacher_test = demo::classification_metrics(data.teacher_logits, data.train.labels);

  const std::string md = demo::markdown_report(setup, result);
  EXPECT_NE(md.find("## mlp, 100 labels, transfer set"), std::string::npos) << md;
  EXPECT_NE(md.find("| mlp, 100 labels, same images | kd_kl |"), std::string::npos) << md;
  EXPECT_EQ(count(md, "Validation accuracy (seed 0) over the grid"), 3);
  EXPECT_EQ(count(md, "**"), 2 * 3);  // the chosen grid point per cell

  const std::string json = demo::json_report(setup, result);
  EXPECT_NE(json.find("\"command\": \"fusedkd_demo --a \\\"quoted\\\" <arg>\""), std::string::npos);
  EXPECT_EQ(count(json, "\"method\": \"pseudo\""), 1);
  EXPECT_EQ(count(json, "\"confusion\": [["), 1 + 2 * 10);  // the teacher and every seed of every arm
  EXPECT_NE(json.find("\"classes\": [\"T-shirt/top\", \"Trouser\","), std::string::npos);
  EXPECT_EQ(count(json, "\"vs_ce\": null"), 3);  // ce itself, in each cell

  const std::string svg = demo::svg_plot(setup, result);
  EXPECT_EQ(svg.rfind("<svg ", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  // ce, ce_ls; kd_kl (same), kd_kl (transfer); pseudo (transfer).
  EXPECT_EQ(count(svg, "class=\"series\""), 5);
  EXPECT_NE(svg.find("<title>kd_kl (transfer)</title>"), std::string::npos);
}

// Two epochs on 2,000 images: far above chance (10%) if the training loop works at all; the same
// seed gives the same teacher and the same students.
TEST(Training, TeacherLearnsAndRunsAreReproducible) {
  if (!have_real_data()) GTEST_SKIP() << "skipped: Fashion-MNIST not found";
  const demo::StudyData tiny = tiny_study_data();
  demo::TrainOptions options;
  options.steps = 32;
  options.evaluations = 2;
  demo::TeacherNet teacher, again;
  const demo::TrainLog t = demo::train_teacher(teacher, tiny.train, tiny.validation, 2, options);
  ASSERT_EQ(t.checkpoints.size(), 2u);
  EXPECT_GT(t.best_validation_accuracy, 0.6);
  EXPECT_LT(t.checkpoints[1].train_loss, t.checkpoints[0].train_loss);
  // The same seed, the same teacher: whatever LibTorch's generator held before.
  torch::manual_seed(12345);
  const demo::TrainLog u = demo::train_teacher(again, tiny.train, tiny.validation, 2, options);
  EXPECT_EQ(t.checkpoints[1].train_loss, u.checkpoints[1].train_loss);
  EXPECT_TRUE(torch::equal(demo::predict_logits(teacher, tiny.test.images, torch::kCPU),
                           demo::predict_logits(again, tiny.test.images, torch::kCPU)));

  demo::StudyData data = tiny;
  std::tie(data.teacher_logits, data.teacher_features) = demo::predict(
      *teacher, [&](const torch::Tensor& x) { return teacher->forward(x); }, data.train.images, torch::kCPU, true);
  EXPECT_EQ(data.teacher_features.sizes(), (std::vector<std::int64_t>{2000, 64, 7, 7}));
  const demo::Cell cell{demo::StudentKind::Cnn, 500, demo::Regime::Transfer};
  for (const std::string name : {"kd_kl", "kd_mse_hint"}) {
    const demo::Method& m = demo::find_method(name);
    const demo::Pool pool = demo::make_pool(cell, m, data.train.labels, 0);
    const demo::LossSetting setting{4.0, 0.9, demo::LossForm::Balanced};
    const demo::TrainedStudent a = demo::train_student(cell.student, m, setting, data, pool, options);
    const demo::TrainedStudent b = demo::train_student(cell.student, m, setting, data, pool, options);
    EXPECT_GT(a.log.best_validation_accuracy, 0.3) << name;
    EXPECT_EQ(a.log.checkpoints[1].train_loss, b.log.checkpoints[1].train_loss) << name;
    EXPECT_TRUE(torch::equal(demo::predict_logits(*a.net, data.test.images, torch::kCPU),
                             demo::predict_logits(*b.net, data.test.images, torch::kCPU)));
  }
  demo::StudyData no_features = data;
  no_features.teacher_features = at::Tensor();
  const demo::Method& attention = demo::find_method("kd_kl_attention");
  expect_error_containing(
      [&] {
        demo::train_student(demo::StudentKind::Cnn, attention, {}, no_features,
                            demo::make_pool(cell, attention, data.train.labels, 0), options);
      },
      "needs the teacher's feature maps");
  expect_error_containing(
      [&] {
        demo::train_student(demo::StudentKind::Mlp, attention, {}, data,
                            demo::make_pool(cell, attention, data.train.labels, 0), options);
      },
      "CNN student only");
}

}  // namespace
