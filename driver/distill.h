// The students' losses (each method's, from fusedkd's ops) and the training loop: a fixed number
// of optimiser steps, the validation accuracy checked at regular steps, the best checkpoint kept.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fashion_mnist.h"
#include "metrics.h"
#include "models.h"

namespace fusedkd::demo {

// Marks a training image whose label the student is not given (kd_loss's default ignore_index).
constexpr std::int64_t kUnlabelled = -100;
constexpr double kLabelSmoothing = 0.1;

// What a method's hard term learns from.
enum class Target {
  Labels,          // cross-entropy on the given labels
  SmoothedLabels,  // cross-entropy with label smoothing 0.1 (control: is the gain only smoothing?)
  PseudoLabels,    // cross-entropy on the given labels and on the teacher's argmax where none is given
  Teacher,         // the given labels and the teacher's softened outputs (distillation)
};
enum class FeatureLoss { None, Hint, Attention, Similarity };

struct Method {
  std::string name;         // used on the command line and in the results
  std::string description;  // one line for the report
  Target target = Target::Labels;
  std::string divergence;   // Target::Teacher: "kl", "mse", "reverse_kl" or "jsd"
  FeatureLoss feature = FeatureLoss::None;
  double feature_weight = 0;
  bool seed_loss = false;   // one of the seed's two losses (MSE, KL)
};

// The methods in report order: the controls, then the seed's two losses, then the others.
const std::vector<Method>& standard_methods();
// Throws std::invalid_argument listing the names for an unknown one.
const Method& find_method(const std::string& name);
// Whether a method learns anything from the teacher (and so has a temperature and an alpha).
inline bool uses_teacher(const Method& m) { return m.target == Target::Teacher; }

// How the hard and the soft term are mixed:
//   Balanced (the demo's): (1 - alpha) * CE + alpha * T^2 * D   (Hinton et al.'s form)
//   Seed:                  CE + alpha * D                       (the seed's examples)
// D is kd_loss's divergence at temperature T; for "mse" the demo's Balanced form multiplies
// kd_loss's mean over R x V elements by V (a sum over the classes, averaged over the rows: the KL's
// batchmean scale), while the Seed form keeps the seed's nn.MSELoss mean.
enum class LossForm { Balanced, Seed };
struct LossSetting {
  double temperature = 1.0;
  double alpha = 0.5;
  LossForm form = LossForm::Balanced;
};
std::string form_name(LossForm form);
LossForm parse_form(const std::string& name);

// One batch as the loss sees it. `labels` holds kUnlabelled where the student has no label;
// `all_labelled` says there is none such (the loss is then one fused kd_loss call).
struct Batch {
  torch::Tensor student_logits, teacher_logits, labels;
  bool all_labelled = true;
  torch::Tensor student_features, teacher_features;  // feature methods only
  torch::Tensor regressor_weight, regressor_bias;    // FeatureLoss::Hint: [64, 16], [64]
};
torch::Tensor student_loss(const Method& method, const LossSetting& setting, const Batch& batch);

// ---------------------------------------------------------------- training

struct TrainOptions {
  int steps = 2000;       // optimiser steps (the same for every method of a comparison)
  int evaluations = 20;   // validation checks, evenly spaced; the last after the last step
  int batch_size = 128;
  double learning_rate = 1e-3;  // Adam, as in the seed
  std::uint64_t seed = 0;       // initial weights and batch order
  torch::Device device = torch::kCPU;
};

struct Checkpoint {
  int step = 0;
  double train_loss = 0;           // mean batch loss since the previous checkpoint
  double validation_accuracy = 0;
};

struct TrainLog {
  std::vector<Checkpoint> checkpoints;
  int best_step = 0;                  // the checkpoint kept: best validation accuracy, earliest on ties
  double best_validation_accuracy = 0;
  double seconds = 0;                 // training and validation time
};

// Called after each checkpoint with (steps done, steps in all, the checkpoint).
using Progress = std::function<void(int, int, const Checkpoint&)>;

// The loop every network is trained with: options.steps Adam steps on batches drawn from
// `pool_size` items (consecutive random permutations from a generator seeded with options.seed,
// so every batch is full), `step(positions)` computing the batch loss (positions into the pool);
// every steps/evaluations steps `validate()` gives the validation accuracy; the parameters of the
// best checkpoint are restored at the end.
TrainLog train_steps(const std::vector<torch::Tensor>& parameters, std::int64_t pool_size, const TrainOptions& options,
                     const std::function<torch::Tensor(const at::Tensor&)>& step,
                     const std::function<double()>& validate, const Progress& progress = {});

// A model's logits and feature maps over `images`, in eval mode, without gradients, in batches of
// 1000, on `device` (features only when asked for; undefined when the model has none).
std::pair<at::Tensor, at::Tensor> predict(torch::nn::Module& module,
                                          const std::function<std::pair<torch::Tensor, torch::Tensor>(
                                              const torch::Tensor&)>& forward,
                                          const at::Tensor& images, torch::Device device, bool features);
// The share of rows whose argmax is their label (0 for no rows): the validation checks' measure.
double accuracy_of(const at::Tensor& logits, const at::Tensor& labels);
at::Tensor predict_logits(TeacherNet& teacher, const at::Tensor& images, torch::Device device);
at::Tensor predict_logits(StudentNet& student, const at::Tensor& images, torch::Device device);

// The data a study trains on: the training part of the split (all its real labels), the
// validation part, the test set, and the teacher's outputs over the training part.
struct StudyData {
  Split train, validation, test;
  at::Tensor teacher_logits;    // [train, 10], eval mode
  at::Tensor teacher_features;  // [train, 64, 7, 7] when a feature method runs, else undefined
};

// Trains a fresh teacher (replacing `teacher`; weights, dropout and shifts follow options.seed) on
// `train` with cross-entropy, each batch's images moved by up to `max_shift` pixels (0: none),
// checkpoints on `validation`.
TrainLog train_teacher(TeacherNet& teacher, const Split& train, const Split& validation, int max_shift,
                       const TrainOptions& options, const Progress& progress = {});

// What one student run trains on: `index` positions into StudyData::train, `labels` what the
// student is told of each (the real label, or kUnlabelled).
struct Pool {
  at::Tensor index;
  at::Tensor labels;
  bool all_labelled = true;
};

struct TrainedStudent {
  std::shared_ptr<StudentNet> net;
  TrainLog log;
};

// Trains a fresh student of `kind` (weights and batch order from options.seed, so every method
// starts from the same weights for one seed) with `method` at `setting` on `pool`; returns it at
// its best validation checkpoint.
TrainedStudent train_student(StudentKind kind, const Method& method, const LossSetting& setting, const StudyData& data,
                             const Pool& pool, const TrainOptions& options, const Progress& progress = {});

}  // namespace fusedkd::demo
