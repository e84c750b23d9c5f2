#include "distill.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional.h>
#include <torch/optim/adam.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "fusedkd/torch.h"
#include "splits.h"

namespace fusedkd::demo {

namespace F = torch::nn::functional;

double accuracy_of(const at::Tensor& logits, const at::Tensor& labels) {
  if (labels.size(0) == 0) return 0.0;
  return logits.argmax(1).to(at::kCPU).eq(labels.to(at::kCPU)).to(at::kDouble).mean().item<double>();
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

constexpr int kEvalBatch = 1000;

}  // namespace

const std::vector<Method>& standard_methods() {
  // The feature weights are those the RepDistiller benchmark (Tian et al.) uses with the same
  // normalisations: attention transfer 1000 with the mean over N * H * W, similarity preserving
  // 3000 with its 1 / N^2. The FitNets hint has weight 1 with the mean over elements (ours).
  static const std::vector<Method> methods = {
      {"ce", "cross-entropy on the given labels (no teacher)", Target::Labels, "", FeatureLoss::None, 0, false},
      {"ce_ls", "cross-entropy with label smoothing 0.1 (no teacher)", Target::SmoothedLabels, "", FeatureLoss::None, 0,
       false},
      {"pseudo", "cross-entropy on the teacher's argmax where no label is given", Target::PseudoLabels, "",
       FeatureLoss::None, 0, false},
      {"kd_kl", "KL(teacher || student) with CE (seed example 2)", Target::Teacher, "kl", FeatureLoss::None, 0, true},
      {"kd_mse", "MSE of softened probabilities with CE (seed example 1)", Target::Teacher, "mse", FeatureLoss::None, 0,
       true},
      {"kd_reverse_kl", "KL(student || teacher) with CE", Target::Teacher, "reverse_kl", FeatureLoss::None, 0, false},
      {"kd_jsd", "Jensen-Shannon (beta 0.5) with CE", Target::Teacher, "jsd", FeatureLoss::None, 0, false},
      {"kd_mse_hint", "kd_mse + FitNets hint on the 7x7 maps (seed example 3; CNN student)", Target::Teacher, "mse",
       FeatureLoss::Hint, 1.0, false},
      {"kd_kl_attention", "kd_kl + attention transfer on the 7x7 maps (CNN student)", Target::Teacher, "kl",
       FeatureLoss::Attention, 1000.0, false},
      {"kd_kl_similarity", "kd_kl + similarity-preserving loss on the 7x7 maps (CNN student)", Target::Teacher, "kl",
       FeatureLoss::Similarity, 3000.0, false},
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

std::string form_name(LossForm form) { return form == LossForm::Balanced ? "balanced" : "seed"; }

LossForm parse_form(const std::string& name) {
  if (name == "balanced") return LossForm::Balanced;
  if (name == "seed") return LossForm::Seed;
  throw std::invalid_argument("fusedkd demo: unknown loss form '" + name + "' (balanced or seed)");
}

torch::Tensor student_loss(const Method& method, const LossSetting& setting, const Batch& b) {
  const torch::Tensor& s = b.student_logits;
  torch::Tensor loss;
  switch (method.target) {
    case Target::Labels: loss = F::cross_entropy(s, b.labels); break;
    case Target::SmoothedLabels: {
      // (1 - e) CE + e * mean_j(-log q_j) = (1 - e) CE + e * (KL(uniform || q) + log V): one fused
      // kd_loss with a uniform teacher (all-zero logits), over the labelled rows like F.cross_entropy.
      const double e = kLabelSmoothing;
      loss = fusedkd::kd_loss(s, at::zeros_like(s), b.labels, 1.0, e, 1.0 - e, "kl") +
             e * std::log(static_cast<double>(s.size(1)));
      break;
    }
    case Target::PseudoLabels:
      loss = F::cross_entropy(s, at::where(b.labels == kUnlabelled, b.teacher_logits.argmax(1), b.labels));
      break;
    case Target::Teacher: {
      const bool balanced = setting.form == LossForm::Balanced;
      const double scale = balanced && method.divergence == "mse" ? static_cast<double>(s.size(1)) : 1.0;
      const double soft = setting.alpha * scale, hard = balanced ? 1.0 - setting.alpha : 1.0;
      if (b.all_labelled) {
        loss = fusedkd::kd_loss(s, b.teacher_logits, b.labels, setting.temperature, soft, hard, method.divergence,
                                /*beta=*/0.5, kUnlabelled, /*t2_scale=*/balanced);
      } else {
        // The soft term on every row, the hard term on the labelled rows only (kd_loss averages its
        // divergence over the labelled rows when given labels, so these are two calls; a batch with
        // no label gives a hard term of 0).
        loss = fusedkd::kd_loss(s, b.teacher_logits, std::nullopt, setting.temperature, soft, 0.0, method.divergence,
                                0.5, kUnlabelled, balanced) +
               fusedkd::kd_loss(s, b.teacher_logits, b.labels, 1.0, 0.0, hard, "kl", 0.5, kUnlabelled, false);
      }
      break;
    }
  }
  switch (method.feature) {
    case FeatureLoss::None: break;
    case FeatureLoss::Hint:
      loss = loss + method.feature_weight * fusedkd::projected_feature_mse(b.student_features, b.regressor_weight,
                                                                           b.regressor_bias, b.teacher_features, "mean");
      break;
    case FeatureLoss::Attention:
      loss = loss + method.feature_weight *
                        fusedkd::attention_transfer(b.student_features, b.teacher_features, 2.0, "mean");
      break;
    case FeatureLoss::Similarity:
      loss = loss + method.feature_weight * fusedkd::similarity_preserving(b.student_features, b.teacher_features);
      break;
  }
  return loss;
}

TrainLog train_steps(const std::vector<torch::Tensor>& parameters, std::int64_t pool_size, const TrainOptions& options,
                     const std::function<torch::Tensor(const at::Tensor&)>& step,
                     const std::function<double()>& validate, const Progress& progress) {
  if (options.steps < 1 || options.batch_size < 1 || options.evaluations < 1)
    throw std::invalid_argument("fusedkd demo: steps, batch size and evaluations must be at least 1");
  if (pool_size < 1) throw std::invalid_argument("fusedkd demo: nothing to train on");
  const Clock::time_point start = Clock::now();
  torch::optim::Adam optimizer(parameters, torch::optim::AdamOptions(options.learning_rate));
  at::Generator shuffle = at::detail::createCPUGenerator(options.seed);
  const int evaluations = std::min(options.evaluations, options.steps);
  TrainLog log;
  log.best_validation_accuracy = -1;
  std::vector<at::Tensor> best;
  at::Tensor order = at::empty({0}, at::kLong);
  std::int64_t used = 0;
  at::Tensor loss_sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(options.device));
  int since_check = 0;
  for (int done = 0, next_check = 1; done < options.steps;) {
    // Whole batches from consecutive permutations of the pool.
    while (order.size(0) - used < options.batch_size) {
      order = at::cat({order.narrow(0, used, order.size(0) - used), at::randperm(pool_size, shuffle, at::kLong)});
      used = 0;
    }
    const torch::Tensor loss = step(order.narrow(0, used, options.batch_size));
    used += options.batch_size;
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    loss_sum += loss.detach();  // read once per checkpoint: no host sync per step on a GPU
    ++done;
    ++since_check;
    // Checkpoint k (1..evaluations) after round(k * steps / evaluations) steps.
    if (done == (static_cast<std::int64_t>(next_check) * options.steps + evaluations / 2) / evaluations ||
        done == options.steps) {
      Checkpoint c;
      c.step = done;
      c.train_loss = loss_sum.item<double>() / since_check;
      c.validation_accuracy = validate();
      log.checkpoints.push_back(c);
      if (c.validation_accuracy > log.best_validation_accuracy) {
        log.best_validation_accuracy = c.validation_accuracy;
        log.best_step = done;
        torch::NoGradGuard no_grad;
        best.clear();
        for (const torch::Tensor& p : parameters) best.push_back(p.detach().clone());
      }
      loss_sum.zero_();
      since_check = 0;
      ++next_check;
      if (progress) progress(done, options.steps, c);
    }
  }
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < parameters.size(); ++i) parameters[i].detach().copy_(best[i]);
  log.seconds = seconds_since(start);
  return log;
}

std::pair<at::Tensor, at::Tensor> predict(
    torch::nn::Module& module, const std::function<std::pair<torch::Tensor, torch::Tensor>(const torch::Tensor&)>& forward,
    const at::Tensor& images, torch::Device device, bool features) {
  const bool was_training = module.is_training();
  module.eval();
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> logits, maps;
  for (std::int64_t i = 0; i < images.size(0); i += kEvalBatch) {
    auto [l, f] = forward(images.narrow(0, i, std::min<std::int64_t>(kEvalBatch, images.size(0) - i)).to(device));
    logits.push_back(l);
    if (features && f.defined()) maps.push_back(f);
  }
  module.train(was_training);
  if (logits.empty()) return {at::empty({0, kFashionClasses}, at::TensorOptions().device(device)), at::Tensor()};
  return {at::cat(logits), maps.empty() ? at::Tensor() : at::cat(maps)};
}

at::Tensor predict_logits(TeacherNet& teacher, const at::Tensor& images, torch::Device device) {
  return predict(*teacher, [&](const torch::Tensor& x) { return teacher->forward(x); }, images, device, false).first;
}

at::Tensor predict_logits(StudentNet& student, const at::Tensor& images, torch::Device device) {
  return predict(student, [&](const torch::Tensor& x) { return student.forward(x); }, images, device, false).first;
}

TrainLog train_teacher(TeacherNet& teacher, const Split& train, const Split& validation, int max_shift,
                       const TrainOptions& options, const Progress& progress) {
  // LibTorch seeds its default generator nondeterministically: the teacher is built afresh after
  // seeding, so that its initial weights (and dropout masks) follow options.seed alone.
  torch::manual_seed(options.seed);
  teacher = TeacherNet();
  teacher->to(options.device);
  teacher->train();
  at::Generator shifts = at::detail::createCPUGenerator(options.seed + 1);
  const double background = train.images.numel() ? train.images.min().item<double>() : 0.0;
  const auto step = [&](const at::Tensor& positions) {
    const at::Tensor x = random_shift(train.images.index_select(0, positions), max_shift, background, shifts);
    const at::Tensor y = train.labels.index_select(0, positions);
    return F::cross_entropy(teacher->forward(x.to(options.device)).first, y.to(options.device));
  };
  const auto validate = [&] {
    return accuracy_of(predict_logits(teacher, validation.images, options.device), validation.labels);
  };
  TrainLog log = train_steps(teacher->parameters(), train.labels.size(0), options, step, validate, progress);
  teacher->eval();
  return log;
}

TrainedStudent train_student(StudentKind kind, const Method& method, const LossSetting& setting, const StudyData& data,
                             const Pool& pool, const TrainOptions& options, const Progress& progress) {
  if (data.teacher_logits.size(0) != data.train.labels.size(0))
    throw std::invalid_argument("fusedkd demo: the teacher's logits must hold one row per training image");
  if (method.feature != FeatureLoss::None && kind != StudentKind::Cnn)
    throw std::invalid_argument("fusedkd demo: method " + method.name + " matches feature maps: CNN student only");
  if (method.feature != FeatureLoss::None && !data.teacher_features.defined())
    throw std::invalid_argument("fusedkd demo: method " + method.name + " needs the teacher's feature maps");
  if (pool.index.size(0) != pool.labels.size(0))
    throw std::invalid_argument("fusedkd demo: a pool needs one label (or kUnlabelled) per image");
  torch::manual_seed(options.seed);
  TrainedStudent out;
  out.net = make_student(kind);
  // The FitNets regressor: a 1x1 convolution from the student's 16 channels to the teacher's 64,
  // initialised like torch.nn.Conv2d's and trained with the student (built after the student, so
  // the student's initial weights are the same for every method).
  torch::nn::Conv2d regressor(torch::nn::Conv2dOptions(kStudentFeatureChannels, kTeacherFeatureChannels, 1));
  out.net->to(options.device);
  regressor->to(options.device);
  out.net->train();
  std::vector<torch::Tensor> parameters = out.net->parameters();
  if (method.feature == FeatureLoss::Hint)
    for (const torch::Tensor& p : regressor->parameters()) parameters.push_back(p);

  const torch::Device device = options.device;
  const at::Tensor images = data.train.images.index_select(0, pool.index).to(device);
  const at::Tensor labels = pool.labels.to(device);
  const at::Tensor teacher_logits = data.teacher_logits.index_select(0, pool.index.to(data.teacher_logits.device())).to(device);
  const bool features = method.feature != FeatureLoss::None;
  const at::Tensor teacher_features =
      features ? data.teacher_features.index_select(0, pool.index.to(data.teacher_features.device())).to(device)
               : at::Tensor();
  const auto step = [&](const at::Tensor& positions) {
    const at::Tensor p = positions.to(device);
    Batch b;
    std::tie(b.student_logits, b.student_features) = out.net->forward(images.index_select(0, p));
    b.teacher_logits = teacher_logits.index_select(0, p);
    b.labels = labels.index_select(0, p);
    b.all_labelled = pool.all_labelled;
    if (features) {
      b.teacher_features = teacher_features.index_select(0, p);
      b.regressor_weight = regressor->weight.flatten(1);
      b.regressor_bias = regressor->bias;
    }
    return student_loss(method, setting, b);
  };
  const auto validate = [&] {
    return accuracy_of(predict_logits(*out.net, data.validation.images, device), data.validation.labels);
  };
  out.log = train_steps(parameters, pool.index.size(0), options, step, validate, progress);
  out.net->eval();
  return out;
}

}  // namespace fusedkd::demo
