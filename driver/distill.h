// Training the teacher and distilling students with fusedkd's losses.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "fashion_mnist.h"
#include "metrics.h"
#include "models.h"

namespace fusedkd::demo {

// How a student is trained: cross-entropy on the labels (weight 1) plus, when `divergence` is set,
// soft_weight * T^2 * divergence(student, teacher) at temperature T (fusedkd::kd_loss, one fused
// op), plus, when `feature` is set, feature_weight * a feature-map loss between the students' and
// the teacher's 7x7 maps.
enum class FeatureLoss { None, Hint, Attention, Similarity };

struct Method {
  std::string name;                     // short name used on the command line and in the results
  std::string description;              // one line for the table
  std::string divergence;               // "" (plain training), "kl", "reverse_kl", "jsd", "mse"
  double temperature = 1.0;
  double soft_weight = 0.0;
  FeatureLoss feature = FeatureLoss::None;
  double feature_weight = 0.0;
};

// The methods the demo compares, in table order: plain training first.
const std::vector<Method>& standard_methods();
// Looks a method up by name; throws std::invalid_argument listing the names for an unknown one.
const Method& find_method(const std::string& name);

// The students' loss for one batch. `regressor_weight` [64, 16] and `regressor_bias` [64] are the
// FitNets regressor (used by FeatureLoss::Hint only).
torch::Tensor student_loss(const Method& method, const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                           const torch::Tensor& labels, const torch::Tensor& student_features,
                           const torch::Tensor& teacher_features, const torch::Tensor& regressor_weight,
                           const torch::Tensor& regressor_bias);

struct TrainOptions {
  int epochs = 5;
  int batch_size = 128;
  double learning_rate = 1e-3;  // Adam, as in the seed
  std::uint64_t seed = 0;
  torch::Device device = torch::kCPU;
};

struct EpochRecord {
  int epoch = 0;            // 1-based
  double train_loss = 0;    // mean over the epoch's batches
  double test_accuracy = 0;
  double seconds = 0;       // training time of the epoch (evaluation excluded)
};

struct RunResult {
  std::string method;
  std::uint64_t seed = 0;
  std::vector<EpochRecord> epochs;
  ClassificationMetrics test;  // after the last epoch
  double train_seconds = 0;
};

// The teacher's logits over a split, in batches, without gradients, in eval mode (on the CPU).
at::Tensor predict_logits(TeacherNet& model, const at::Tensor& images, torch::Device device);

// What the students learn from, computed once: the frozen teacher's logits over the training
// images and, when a feature-matching method runs, its 7x7 feature maps (60,000 x 64 x 7 x 7
// float32, 750 MB, on `device`).
struct TeacherTargets {
  at::Tensor logits;
  at::Tensor features;  // undefined when not asked for
};
TeacherTargets teacher_targets(TeacherNet& teacher, const at::Tensor& images, torch::Device device, bool features);

// Trains a fresh teacher (replacing `teacher`; initial weights, dropout masks and batch order
// follow options.seed) with cross-entropy. `progress` (may be empty) is called after every epoch.
RunResult train_teacher(TeacherNet& teacher, const FashionMnist& data, const TrainOptions& options,
                        const std::function<void(const EpochRecord&)>& progress = {});

// Trains a fresh student (initialised from options.seed: every method sees the same initial
// weights and batch order for a given seed) with `method`, from the teacher's targets over
// data.train (with features for a feature-matching method).
RunResult train_student(const Method& method, const TeacherTargets& teacher, const FashionMnist& data,
                        const TrainOptions& options,
                        const std::function<void(const EpochRecord&)>& progress = {});

}  // namespace fusedkd::demo
