// The Fashion-MNIST demo's parts (driver/): the IDX reader, the data loader, the classification
// metrics against hand-computed values, each method's loss against the seed's composite written
// with LibTorch, the summaries and reports, and short training runs (the teacher learns; a
// student run is reproducible from its seed).
#include <gtest/gtest.h>
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

// ---------------------------------------------------------------- the methods' losses

// Each method's loss against the seed's formulation written with LibTorch's functional API.
TEST(StudentLoss, EveryMethodEqualsItsComposite) {
  torch::manual_seed(3);
  const at::Tensor s = torch::randn({16, 10}, torch::kDouble) * 3, t = torch::randn({16, 10}, torch::kDouble) * 3;
  const at::Tensor y = torch::randint(0, 10, {16}, torch::kLong);
  const at::Tensor fs = torch::randn({16, demo::kStudentFeatureChannels, 7, 7}, torch::kDouble).relu();
  const at::Tensor ft = torch::randn({16, demo::kTeacherFeatureChannels, 7, 7}, torch::kDouble).relu();
  const at::Tensor w = torch::randn({demo::kTeacherFeatureChannels, demo::kStudentFeatureChannels}, torch::kDouble);
  const at::Tensor b = torch::randn({demo::kTeacherFeatureChannels}, torch::kDouble);
  const auto soft = [&](double temperature) {
    return std::pair{F::softmax(s / temperature, 1), F::softmax(t / temperature, 1)};
  };
  const auto attention_map = [](const at::Tensor& x) {
    return F::normalize(x.pow(2).mean(1).flatten(1), F::NormalizeFuncOptions().dim(1));
  };
  const auto gram = [](const at::Tensor& x) {
    const at::Tensor f = x.flatten(1);
    return F::normalize(f.mm(f.t()), F::NormalizeFuncOptions().dim(1));
  };
  const at::Tensor ce = F::cross_entropy(s, y);
  const auto [q5, p5] = soft(5.0);
  const at::Tensor mse = ce + 10.0 * 25.0 * F::mse_loss(q5, p5);
  const at::Tensor kl = ce + 100.0 * F::kl_div(F::log_softmax(s / 10.0, 1), F::softmax(t / 10.0, 1),
                                               F::KLDivFuncOptions().reduction(torch::kBatchMean));
  const at::Tensor reverse_kl = ce + 100.0 * F::kl_div(F::log_softmax(t / 10.0, 1), F::softmax(s / 10.0, 1),
                                                       F::KLDivFuncOptions().reduction(torch::kBatchMean));
  const auto [q10, p10] = soft(10.0);
  const at::Tensor m = 0.5 * (q10 + p10);
  const at::Tensor jsd = ce + 100.0 * 0.5 *
                                  ((p10 * (p10 / m).log()).sum(1) + (q10 * (q10 / m).log()).sum(1)).mean();
  const at::Tensor hint = mse + F::mse_loss(torch::conv2d(fs, w.view({64, 16, 1, 1}), b), ft);
  const at::Tensor attention = kl + 1000.0 * F::mse_loss(attention_map(fs), attention_map(ft));
  const at::Tensor similarity = kl + 3000.0 * (gram(fs) - gram(ft)).pow(2).sum() / (16.0 * 16.0);
  const std::vector<std::pair<std::string, at::Tensor>> expected = {
      {"ce", ce},       {"kd_mse", mse},           {"kd_kl", kl},
      {"kd_reverse_kl", reverse_kl}, {"kd_jsd", jsd}, {"kd_mse_hint", hint},
      {"kd_kl_attention", attention}, {"kd_kl_similarity", similarity}};
  ASSERT_EQ(expected.size(), demo::standard_methods().size());
  for (const auto& [name, value] : expected) {
    const at::Tensor loss = demo::student_loss(demo::find_method(name), s, t, y, fs, ft, w, b);
    EXPECT_NEAR(loss.item<double>(), value.item<double>(), 1e-10 * std::fabs(value.item<double>())) << name;
  }
  expect_error_containing([] { demo::find_method("kd_nope"); }, "kd_kl_similarity");
}

// ---------------------------------------------------------------- summaries and reports

demo::RunResult fake_run(const std::string& method, std::uint64_t seed, double accuracy) {
  demo::RunResult r;
  r.method = method;
  r.seed = seed;
  r.test.accuracy = accuracy;
  r.test.macro_f1 = accuracy - 0.01;
  r.test.f1.assign(10, accuracy);
  r.test.confusion.assign(100, 1);
  r.epochs = {{1, 0.5, accuracy - 0.02, 2.0}, {2, 0.4, accuracy, 4.0}};
  return r;
}

TEST(Report, MeanStdAndPairedSummaries) {
  const demo::MeanStd v = demo::mean_std({1, 2, 3, 4});
  EXPECT_DOUBLE_EQ(v.mean, 2.5);
  EXPECT_NEAR(v.std, std::sqrt(5.0 / 3.0), 1e-15);
  EXPECT_EQ(demo::mean_std({7}).std, 0.0);

  const std::vector<demo::RunResult> runs = {fake_run("ce", 0, 0.80), fake_run("kd_kl", 0, 0.83),
                                             fake_run("ce", 1, 0.84), fake_run("kd_kl", 1, 0.83)};
  const std::vector<demo::Method> methods = {demo::find_method("ce"), demo::find_method("kd_kl"),
                                             demo::find_method("kd_jsd")};
  const std::vector<demo::MethodSummary> s = demo::summarize(runs, methods);
  ASSERT_EQ(s.size(), 2u);  // kd_jsd has no runs
  EXPECT_EQ(s[0].method, "ce");
  EXPECT_FALSE(s[0].has_baseline);
  EXPECT_NEAR(s[1].accuracy.mean, 0.83, 1e-15);
  EXPECT_NEAR(s[1].accuracy_gain, (0.03 - 0.01) / 2, 1e-15);
  EXPECT_EQ(s[1].seeds_better, 1);
  EXPECT_EQ(s[1].seeds_compared, 2);
  ASSERT_EQ(s[1].mean_accuracy_by_epoch.size(), 2u);
  EXPECT_NEAR(s[1].mean_accuracy_by_epoch[0], 0.81, 1e-15);
  EXPECT_DOUBLE_EQ(s[1].seconds_per_epoch, 3.0);
}

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(Report, TableJsonAndPlot) {
  const std::vector<demo::RunResult> runs = {fake_run("ce", 0, 0.80), fake_run("kd_kl", 0, 0.83)};
  std::vector<demo::Method> methods = {demo::find_method("ce"), demo::find_method("kd_kl")};
  methods[1].description = "a \"quoted\" <method> & more";
  const std::vector<demo::MethodSummary> s = demo::summarize(runs, methods);
  demo::DemoSetup setup;
  setup.seeds = 1;
  const demo::RunResult teacher = fake_run("teacher", 9, 0.9);

  const std::string table = demo::markdown_report(setup, teacher, s);
  EXPECT_NE(table.find("| kd_kl | 83.00 | +3.00 (1/1) |"), std::string::npos) << table;
  EXPECT_NE(table.find("Teacher: accuracy 90.00%"), std::string::npos) << table;

  const std::string json = demo::json_report(setup, teacher, s, runs);
  EXPECT_NE(json.find("\"description\": \"a \\\"quoted\\\" <method> & more\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"accuracy_gain_vs_ce\": null"), std::string::npos);  // plain training itself
  EXPECT_EQ(count(json, "\"confusion\": [["), 3);                              // teacher and two runs
  EXPECT_NE(json.find("\"classes\": [\"T-shirt/top\", \"Trouser\","), std::string::npos);

  const std::string svg = demo::svg_plot(teacher, s);
  EXPECT_EQ(svg.rfind("<svg ", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(count(svg, "class=\"bar\""), 4);    // accuracy and macro-F1 per method
  EXPECT_EQ(count(svg, "class=\"curve\""), 2);  // one per method
  EXPECT_EQ(count(svg, "<circle"), 4);          // one per epoch per method
}

// ---------------------------------------------------------------- training

demo::FashionMnist small_real_set(std::int64_t train, std::int64_t test) {
  demo::FashionMnist data = demo::load_fashion_mnist(demo::fashion_mnist_dir());
  data.train.images = data.train.images.narrow(0, 0, train);
  data.train.labels = data.train.labels.narrow(0, 0, train);
  data.test.images = data.test.images.narrow(0, 0, test);
  data.test.labels = data.test.labels.narrow(0, 0, test);
  return data;
}

// Two epochs on 2,000 images: far above chance (10%) if the training loop works at all; the same
// seed gives the same teacher and the same students.
TEST(Training, TeacherLearnsAndRunsAreReproducible) {
  if (!have_real_data()) GTEST_SKIP() << "skipped: Fashion-MNIST not found";
  const demo::FashionMnist data = small_real_set(2000, 500);
  demo::TrainOptions options;
  options.epochs = 2;
  demo::TeacherNet teacher, again;
  const demo::RunResult t = demo::train_teacher(teacher, data, options);
  ASSERT_EQ(t.epochs.size(), 2u);
  EXPECT_GT(t.test.accuracy, 0.6);
  EXPECT_LT(t.epochs[1].train_loss, t.epochs[0].train_loss);
  // The same seed, the same teacher: whatever LibTorch's generator held before.
  torch::manual_seed(12345);
  const demo::RunResult u = demo::train_teacher(again, data, options);
  EXPECT_EQ(t.epochs[1].train_loss, u.epochs[1].train_loss);
  EXPECT_EQ(t.test.confusion, u.test.confusion);

  const demo::TeacherTargets targets = demo::teacher_targets(teacher, data.train.images, torch::kCPU, true);
  EXPECT_EQ(targets.logits.sizes(), (std::vector<std::int64_t>{2000, 10}));
  EXPECT_EQ(targets.features.sizes(), (std::vector<std::int64_t>{2000, 64, 7, 7}));
  EXPECT_TRUE(torch::allclose(targets.logits, demo::predict_logits(teacher, data.train.images, torch::kCPU)));

  options.epochs = 1;
  for (const std::string name : {"kd_kl", "kd_mse_hint"}) {
    const demo::RunResult a = demo::train_student(demo::find_method(name), targets, data, options);
    const demo::RunResult b = demo::train_student(demo::find_method(name), targets, data, options);
    EXPECT_GT(a.test.accuracy, 0.3) << name;
    EXPECT_EQ(a.epochs[0].train_loss, b.epochs[0].train_loss) << name;
    EXPECT_EQ(a.test.confusion, b.test.confusion) << name;
  }
  demo::TeacherTargets no_features = targets;
  no_features.features = at::Tensor();
  expect_error_containing(
      [&] { demo::train_student(demo::find_method("kd_kl_attention"), no_features, data, options); },
      "needs the teacher's feature maps");
}

}  // namespace
