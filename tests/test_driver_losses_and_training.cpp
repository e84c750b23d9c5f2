// The Fashion-MNIST study's losses and training (driver/): each method's loss against its
// composite written with LibTorch, the training loop's checkpoint selection, and the teacher's and
// the students' training on real images (they learn; the same seed gives the same networks).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "distill.h"
#include "driver_test_support.h"
#include "study.h"

namespace F = torch::nn::functional;
namespace demo = fusedkd::demo;

namespace {

using fusedkd::testing::expect_error_containing;
using fusedkd::testing::have_real_data;
using fusedkd::testing::tiny_study_data;

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

// ---------------------------------------------------------------- training loop

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
