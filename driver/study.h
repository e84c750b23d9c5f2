// The distillation study: for each student, label budget and regime, every method is trained on
// the same seeds for the same number of steps; distillation's temperature and alpha are chosen per
// method on the validation split, the checkpoint of every run too, and the test set is read once
// per final run, after every choice is made.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "distill.h"

namespace fusedkd::demo {

// What a student with a label budget below the full set does with the other training images:
//   Same:     nothing (it trains on its labelled images alone);
//   Transfer: they are its transfer set (Hinton et al. 2015): the soft term on every training
//             image, the hard term on the labelled ones.
// Full: the budget is the whole training split (the two coincide).
enum class Regime { Same, Transfer, Full };
std::string regime_name(Regime regime);
Regime parse_regime(const std::string& name);  // "same" or "transfer"

struct StudyOptions {
  std::vector<StudentKind> students = {StudentKind::Mlp};
  std::vector<std::int64_t> budgets = {1000, 0};  // labelled training images; 0: all of them
  std::vector<Regime> regimes = {Regime::Same, Regime::Transfer};
  std::vector<std::string> methods = {"ce", "ce_ls", "pseudo", "kd_kl", "kd_mse"};
  std::vector<double> temperatures = {1, 2, 4, 8};  // the grid, per distillation method and cell
  std::vector<double> alphas = {0.5, 0.9};
  LossForm form = LossForm::Balanced;
  int seeds = 3;
  // Seed 0 of every run except steps and evaluations; TrainOptions::seed is set per run.
  TrainOptions train;
};

// One comparison: a student, a label budget and a regime.
struct Cell {
  StudentKind student = StudentKind::Mlp;
  std::int64_t budget = 0;  // labelled training images
  Regime regime = Regime::Full;
};
std::string cell_name(const Cell& cell);  // e.g. "mlp, 1000 labels, transfer set"
inline bool operator==(const Cell& a, const Cell& b) {
  return a.student == b.student && a.budget == b.budget && a.regime == b.regime;
}

// The cells of a study in report order, with the methods each runs (pseudo only on a transfer set,
// feature methods only with the CNN student). `train_size` resolves a budget of 0 (or above it).
struct PlannedCell {
  Cell cell;
  std::vector<Method> methods;
};
std::vector<PlannedCell> plan_cells(const StudyOptions& options, std::int64_t train_size);

struct Trial {  // one grid point, trained on the selection seed (0)
  LossSetting setting;
  double validation_accuracy = 0;
  int best_step = 0;
};

struct SeedRun {
  std::uint64_t seed = 0;
  TrainLog log;
  ClassificationMetrics test;  // of the kept checkpoint
};

struct Paired {  // this arm's test accuracy minus a control's, seed by seed
  bool present = false;
  double mean = 0, std = 0;
  int wins = 0, seeds = 0;  // seeds where this arm is strictly more accurate
};

struct ArmResult {
  Cell cell;
  Method method;
  LossSetting chosen;        // distillation methods: the setting chosen on validation
  std::vector<Trial> grid;   // distillation methods: every grid point
  std::vector<SeedRun> runs;
  // Summaries over the seeds.
  double accuracy_mean = 0, accuracy_std = 0, macro_f1 = 0, nll = 0, ece = 0, validation_accuracy = 0;
  Paired vs_ce, vs_ce_ls, vs_pseudo;
  double gap_closed = 0;  // mean(arm - ce) / (teacher - mean(ce)); 0 without a ce arm
  bool has_gap = false;
};

struct StudyResult {
  std::vector<ArmResult> arms;
  double teacher_test_accuracy = 0;
  int runs_trained = 0;
  double seconds = 0;
};

// Progress after each checkpoint of each run.
struct StudyStatus {
  std::string run;         // which run, at which step, its validation accuracy
  bool run_finished = false;
  int runs_finished = 0, runs_planned = 0;
  double share_done = 0;   // of all the planned steps
  double seconds = 0;      // since the study started
  double steps_per_second = 0;  // over the study so far
};
using StudyProgress = std::function<void(const StudyStatus&)>;

// Runs the study. Selection (grid point per distillation method and cell, checkpoint per run)
// reads the training and validation splits only; data.test is read after it, for the final runs.
StudyResult run_study(const StudyOptions& options, const StudyData& data, double teacher_test_accuracy,
                      const StudyProgress& progress = {});

// The pool a run trains on: positions into data.train and the labels the student is given.
Pool make_pool(const Cell& cell, const Method& method, const at::Tensor& train_labels, std::uint64_t seed);

// Mean and sample standard deviation (0 for fewer than two values).
struct MeanStd {
  double mean = 0;
  double std = 0;
};
MeanStd mean_std(const std::vector<double>& values);

}  // namespace fusedkd::demo
