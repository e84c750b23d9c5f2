#include "distill.h"

#include <torch/nn/functional.h>
#include <torch/optim/adam.h>
#include <torch/torch.h>

#include <chrono>
#include <sstream>
#include <stdexcept>

#include "fusedkd/torch.h"

namespace fusedkd::demo {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr int kEvalBatch = 1000;

// A model's logits and feature maps over `images`, in batches, in eval mode, without gradients,
// on `device` (the feature maps only when asked for).
template <typename Net>
std::pair<at::Tensor, at::Tensor> forward_all(Net& model, const at::Tensor& images, torch::Device device,
                                              bool features) {
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> logits, maps;
  for (std::int64_t i = 0; i < images.size(0); i += kEvalBatch) {
    auto [l, f] = model->forward(images.narrow(0, i, std::min<std::int64_t>(kEvalBatch, images.size(0) - i)).to(device));
    logits.push_back(l);
    if (features) maps.push_back(f);
  }
  model->train(was_training);
  if (logits.empty()) return {at::empty({0, kFashionClasses}, at::TensorOptions().device(device)), at::Tensor()};
  return {at::cat(logits), features ? at::cat(maps) : at::Tensor()};
}

template <typename Net>
at::Tensor predict(Net& model, const at::Tensor& images, torch::Device device) {
  return forward_all(model, images, device, false).first.to(at::kCPU);
}

// The epochs of one training run: shuffled batches from a generator seeded with options.seed,
// `step(indices)` returns the batch loss (detached, on the device: read once per epoch, not per
// step) after its optimiser step; the test accuracy after each epoch, and the final metrics, come
// from `evaluate()` (test-set logits).
RunResult run_epochs(const std::string& name, const FashionMnist& data, const TrainOptions& options,
                     const std::function<at::Tensor(const at::Tensor&)>& step,
                     const std::function<at::Tensor()>& evaluate,
                     const std::function<void(const EpochRecord&)>& progress) {
  if (options.epochs < 1 || options.batch_size < 1)
    throw std::invalid_argument("fusedkd demo: epochs and batch size must be at least 1");
  RunResult result;
  result.method = name;
  result.seed = options.seed;
  at::Generator shuffle = at::detail::createCPUGenerator(options.seed);
  const std::int64_t n = data.train.labels.size(0);
  at::Tensor test_logits;
  for (int epoch = 1; epoch <= options.epochs; ++epoch) {
    const Clock::time_point start = Clock::now();
    const at::Tensor order = at::randperm(n, shuffle, at::TensorOptions().dtype(at::kLong));
    at::Tensor loss_sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(options.device));
    std::int64_t batches = 0;
    for (std::int64_t i = 0; i < n; i += options.batch_size) {
      loss_sum += step(order.narrow(0, i, std::min<std::int64_t>(options.batch_size, n - i)));
      ++batches;
    }
    EpochRecord record;
    record.epoch = epoch;
    record.seconds = seconds_since(start);
    record.train_loss = batches ? loss_sum.item<double>() / static_cast<double>(batches) : 0.0;
    result.train_seconds += record.seconds;
    test_logits = evaluate();
    record.test_accuracy = classification_metrics(test_logits, data.test.labels).accuracy;
    result.epochs.push_back(record);
    if (progress) progress(record);
  }
  result.test = classification_metrics(test_logits, data.test.labels);
  return result;
}

}  // namespace

const std::vector<Method>& standard_methods() {
  // Temperatures as in the seed: 5 for its MSE examples (1 and 3), 10 for its KL example (2) and
  // the other divergences. Soft terms are scaled by T^2 (Hinton et al.) so that their gradients do
  // not shrink with T; the MSE's soft_weight of 10 (= V) turns its mean over R * V elements into a
  // sum over the classes averaged over the rows, the scale of the KL's batchmean. The feature
  // weights are those the RepDistiller benchmark (Tian et al.) uses with the same normalisations:
  // attention transfer 1000 with the mean over N * H * W, similarity preserving 3000 with its
  // 1 / N^2. The FitNets hint has weight 1 with the mean over elements (the seed leaves its feature
  // weight open; RepDistiller gives its own hint, on other networks, 100).
  static const std::vector<Method> methods = {
      {"ce", "cross-entropy only (no teacher)", "", 1.0, 0.0, FeatureLoss::None, 0.0},
      {"kd_mse", "CE + MSE of softened probabilities, T=5 (seed example 1)", "mse", 5.0, 10.0, FeatureLoss::None, 0.0},
      {"kd_kl", "CE + KL(teacher || student), T=10 (seed example 2)", "kl", 10.0, 1.0, FeatureLoss::None, 0.0},
      {"kd_reverse_kl", "CE + KL(student || teacher), T=10", "reverse_kl", 10.0, 1.0, FeatureLoss::None, 0.0},
      {"kd_jsd", "CE + Jensen-Shannon (beta 0.5), T=10", "jsd", 10.0, 1.0, FeatureLoss::None, 0.0},
      {"kd_mse_hint", "kd_mse + FitNets hint on the 7x7 maps (seed example 3)", "mse", 5.0, 10.0, FeatureLoss::Hint,
       1.0},
      {"kd_kl_attention", "kd_kl + attention transfer on the 7x7 maps", "kl", 10.0, 1.0, FeatureLoss::Attention,
       1000.0},
      {"kd_kl_similarity", "kd_kl + similarity-preserving loss on the 7x7 maps", "kl", 10.0, 1.0,
       FeatureLoss::Similarity, 3000.0},
  };
  return methods;
}

const Method& find_method(const std::string& name) {
  std::ostringstream names;
  for (const Method& m : standard_methods()) {
    if (m.name == name) return m;
    names << " " << m.name;
  }
  throw std::invalid_argument("fusedkd demo: unknown method '" + name + "'; the methods are:" + names.str());
}

torch::Tensor student_loss(const Method& method, const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                           const torch::Tensor& labels, const torch::Tensor& student_features,
                           const torch::Tensor& teacher_features, const torch::Tensor& regressor_weight,
                           const torch::Tensor& regressor_bias) {
  torch::Tensor loss =
      method.divergence.empty()
          ? torch::nn::functional::cross_entropy(student_logits, labels)
          : fusedkd::kd_loss(student_logits, teacher_logits, labels, method.temperature, method.soft_weight,
                             /*hard_weight=*/1.0, method.divergence, /*beta=*/0.5, /*ignore_index=*/-100,
                             /*t2_scale=*/true);
  switch (method.feature) {
    case FeatureLoss::None: break;
    case FeatureLoss::Hint:
      loss = loss + method.feature_weight * fusedkd::projected_feature_mse(student_features, regressor_weight,
                                                                           regressor_bias, teacher_features, "mean");
      break;
    case FeatureLoss::Attention:
      loss = loss + method.feature_weight * fusedkd::attention_transfer(student_features, teacher_features, 2.0, "mean");
      break;
    case FeatureLoss::Similarity:
      loss = loss + method.feature_weight * fusedkd::similarity_preserving(student_features, teacher_features);
      break;
  }
  return loss;
}

at::Tensor predict_logits(TeacherNet& model, const at::Tensor& images, torch::Device device) {
  return predict(model, images, device);
}

RunResult train_teacher(TeacherNet& teacher, const FashionMnist& data, const TrainOptions& options,
                        const std::function<void(const EpochRecord&)>& progress) {
  // LibTorch seeds its default generator nondeterministically: the teacher is built afresh after
  // seeding, so that its initial weights (and dropout masks) follow options.seed alone.
  torch::manual_seed(options.seed);
  teacher = TeacherNet();
  teacher->to(options.device);
  teacher->train();
  torch::optim::Adam optimizer(teacher->parameters(), torch::optim::AdamOptions(options.learning_rate));
  const auto step = [&](const at::Tensor& indices) {
    const at::Tensor x = data.train.images.index_select(0, indices).to(options.device);
    const at::Tensor y = data.train.labels.index_select(0, indices).to(options.device);
    const torch::Tensor loss = torch::nn::functional::cross_entropy(teacher->forward(x).first, y);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    return loss.detach();
  };
  const auto evaluate = [&] { return predict(teacher, data.test.images, options.device); };
  RunResult result = run_epochs("teacher", data, options, step, evaluate, progress);
  teacher->eval();
  return result;
}

TeacherTargets teacher_targets(TeacherNet& teacher, const at::Tensor& images, torch::Device device, bool features) {
  teacher->to(device);
  auto [logits, maps] = forward_all(teacher, images, device, features);
  if (features && !maps.defined()) maps = at::empty({0, kTeacherFeatureChannels, 7, 7}, at::TensorOptions().device(device));
  return {logits, maps};
}

RunResult train_student(const Method& method, const TeacherTargets& teacher, const FashionMnist& data,
                        const TrainOptions& options, const std::function<void(const EpochRecord&)>& progress) {
  if (teacher.logits.size(0) != data.train.labels.size(0))
    throw std::invalid_argument("fusedkd demo: the teacher's targets must hold one row per training image");
  if (method.feature != FeatureLoss::None && !teacher.features.defined())
    throw std::invalid_argument("fusedkd demo: method " + method.name + " needs the teacher's feature maps");
  torch::manual_seed(options.seed);
  StudentNet student;
  // The FitNets regressor: a 1x1 convolution from the student's 16 channels to the teacher's 64,
  // initialised like torch.nn.Conv2d's and trained with the student.
  torch::nn::Conv2d regressor(torch::nn::Conv2dOptions(kStudentFeatureChannels, kTeacherFeatureChannels, 1));
  student->to(options.device);
  regressor->to(options.device);
  std::vector<torch::Tensor> parameters = student->parameters();
  if (method.feature == FeatureLoss::Hint)
    for (const torch::Tensor& p : regressor->parameters()) parameters.push_back(p);
  torch::optim::Adam optimizer(parameters, torch::optim::AdamOptions(options.learning_rate));
  const at::Tensor teacher_logits = teacher.logits.to(options.device);
  const at::Tensor teacher_features = teacher.features.defined() ? teacher.features.to(options.device) : at::Tensor();

  const auto step = [&](const at::Tensor& indices) {
    const at::Tensor x = data.train.images.index_select(0, indices).to(options.device);
    const at::Tensor y = data.train.labels.index_select(0, indices).to(options.device);
    const at::Tensor index = indices.to(options.device);
    const at::Tensor t_logits = teacher_logits.index_select(0, index);
    const at::Tensor t_features =
        method.feature != FeatureLoss::None ? teacher_features.index_select(0, index) : at::Tensor();
    const auto [s_logits, s_features] = student->forward(x);
    const torch::Tensor loss = student_loss(method, s_logits, t_logits, y, s_features, t_features,
                                            regressor->weight.flatten(1), regressor->bias);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    return loss.detach();
  };
  const auto evaluate = [&] { return predict(student, data.test.images, options.device); };
  return run_epochs(method.name, data, options, step, evaluate, progress);
}

}  // namespace fusedkd::demo
