#include "study.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>

#include "splits.h"

namespace fusedkd::demo {

namespace {

using Clock = std::chrono::steady_clock;

bool is_control(const Method& m) { return m.target == Target::Labels || m.target == Target::SmoothedLabels; }

// Runs on the labelled images alone are the same run in every regime of a budget: one key.
std::string run_key(const Cell& cell, const Method& method, const LossSetting& setting, std::uint64_t seed) {
  const bool labelled_only = is_control(method) || cell.regime != Regime::Transfer;
  char buffer[256];
  std::snprintf(buffer, sizeof buffer, "%s/%lld/%s/%s/%.17g/%.17g/%s/%llu", student_name(cell.student).c_str(),
                static_cast<long long>(cell.budget), labelled_only ? "labelled" : "transfer", method.name.c_str(),
                uses_teacher(method) ? setting.temperature : 0.0, uses_teacher(method) ? setting.alpha : 0.0,
                form_name(setting.form).c_str(), static_cast<unsigned long long>(seed));
  return buffer;
}

std::vector<LossSetting> grid_of(const StudyOptions& o) {
  std::vector<LossSetting> grid;
  for (const double t : o.temperatures)
    for (const double a : o.alphas) grid.push_back({t, a, o.form});
  return grid;
}

std::string setting_text(const Method& m, const LossSetting& s) {
  if (!uses_teacher(m)) return "";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, " T=%g alpha=%g", s.temperature, s.alpha);
  return buffer;
}

Paired paired(const ArmResult& arm, const ArmResult* control) {
  Paired p;
  if (!control) return p;
  std::map<std::uint64_t, double> base;
  for (const SeedRun& r : control->runs) base[r.seed] = r.test.accuracy;
  std::vector<double> diffs;
  for (const SeedRun& r : arm.runs) {
    const auto it = base.find(r.seed);
    if (it == base.end()) continue;
    diffs.push_back(r.test.accuracy - it->second);
    p.wins += r.test.accuracy > it->second ? 1 : 0;
  }
  if (diffs.empty()) return p;
  const MeanStd d = mean_std(diffs);
  p.present = true;
  p.mean = d.mean;
  p.std = d.std;
  p.seeds = static_cast<int>(diffs.size());
  return p;
}

}  // namespace

MeanStd mean_std(const std::vector<double>& values) {
  MeanStd r;
  if (values.empty()) return r;
  for (const double v : values) r.mean += v;
  r.mean /= static_cast<double>(values.size());
  if (values.size() > 1) {
    double ss = 0;
    for (const double v : values) ss += (v - r.mean) * (v - r.mean);
    r.std = std::sqrt(ss / static_cast<double>(values.size() - 1));
  }
  return r;
}

std::string regime_name(Regime regime) {
  switch (regime) {
    case Regime::Same: return "same";
    case Regime::Transfer: return "transfer";
    case Regime::Full: return "full";
  }
  return "";
}

Regime parse_regime(const std::string& name) {
  if (name == "same") return Regime::Same;
  if (name == "transfer") return Regime::Transfer;
  throw std::invalid_argument("fusedkd demo: unknown regime '" + name + "' (same or transfer)");
}

std::string cell_name(const Cell& cell) {
  std::string s = student_name(cell.student) + ", " + std::to_string(cell.budget) + " labels";
  switch (cell.regime) {
    case Regime::Same: return s + ", same images";
    case Regime::Transfer: return s + ", transfer set";
    case Regime::Full: return s + " (all)";
  }
  return s;
}

std::vector<PlannedCell> plan_cells(const StudyOptions& options, std::int64_t train_size) {
  std::vector<PlannedCell> cells;
  for (const StudentKind student : options.students) {
    for (const std::int64_t asked : options.budgets) {
      const bool full = asked <= 0 || asked >= train_size;
      const std::vector<Regime> regimes = full ? std::vector<Regime>{Regime::Full} : options.regimes;
      for (const Regime regime : regimes) {
        PlannedCell p;
        p.cell = {student, full ? train_size : asked, regime};
        for (const std::string& name : options.methods) {
          const Method& m = find_method(name);
          if (m.target == Target::PseudoLabels && regime != Regime::Transfer) continue;
          if (m.feature != FeatureLoss::None && student != StudentKind::Cnn) continue;
          p.methods.push_back(m);
        }
        cells.push_back(p);
      }
    }
  }
  return cells;
}

Pool make_pool(const Cell& cell, const Method& method, const at::Tensor& train_labels, std::uint64_t seed) {
  const at::Tensor labelled = label_budget(train_labels, cell.budget, seed, kFashionClasses);
  Pool pool;
  if (cell.regime == Regime::Transfer && !is_control(method)) {
    pool.index = at::arange(train_labels.size(0), at::kLong);
    pool.labels = at::full({train_labels.size(0)}, kUnlabelled, at::kLong);
    pool.labels.index_copy_(0, labelled, train_labels.index_select(0, labelled));
    pool.all_labelled = labelled.size(0) == train_labels.size(0);
  } else {
    pool.index = labelled;
    pool.labels = train_labels.index_select(0, labelled);
    pool.all_labelled = true;
  }
  return pool;
}

StudyResult run_study(const StudyOptions& options, const StudyData& data, double teacher_test_accuracy,
                      const StudyProgress& progress) {
  if (options.seeds < 1) throw std::invalid_argument("fusedkd demo: a study needs at least one seed");
  if (options.temperatures.empty() || options.alphas.empty())
    throw std::invalid_argument("fusedkd demo: the grid needs at least one temperature and one alpha");
  const Clock::time_point start = Clock::now();
  const std::vector<PlannedCell> cells = plan_cells(options, data.train.labels.size(0));
  const std::vector<LossSetting> grid = grid_of(options);

  // The runs to train, counted once each (for the progress line): the grid on seed 0, then the
  // other seeds of every arm.
  std::set<std::string> planned;
  for (const PlannedCell& p : cells)
    for (const Method& m : p.methods) {
      if (uses_teacher(m)) {
        for (const LossSetting& s : grid) planned.insert(run_key(p.cell, m, s, 0));
        for (int seed = 1; seed < options.seeds; ++seed) planned.insert(run_key(p.cell, m, {-1, -1, options.form}, seed));
      } else {
        for (int seed = 0; seed < options.seeds; ++seed) planned.insert(run_key(p.cell, m, {}, seed));
      }
    }
  const int total_runs = static_cast<int>(planned.size());
  const double total_steps = static_cast<double>(total_runs) * options.train.steps;

  struct Trained {
    TrainLog log;
    std::shared_ptr<StudentNet> net;  // released once the test set has been read for it, or not needed
    bool tested = false;
    ClassificationMetrics test;
  };
  std::map<std::string, Trained> done;
  int finished = 0;
  const auto train = [&](const Cell& cell, const Method& m, const LossSetting& s, std::uint64_t seed) -> Trained& {
    const std::string key = run_key(cell, m, s, seed);
    if (const auto it = done.find(key); it != done.end()) return it->second;
    TrainOptions o = options.train;
    o.seed = seed;
    const std::string what =
        cell_name(cell) + ": " + m.name + setting_text(m, s) + ", seed " + std::to_string(seed);
    const Progress step_progress = [&](int steps, int, const Checkpoint& c) {
      if (!progress) return;
      char line[512];
      std::snprintf(line, sizeof line, "%s: step %d/%d, validation %.2f%%", what.c_str(), steps, o.steps,
                    100.0 * c.validation_accuracy);
      StudyStatus status;
      status.run = line;
      status.run_finished = steps == o.steps;
      status.runs_finished = finished + (status.run_finished ? 1 : 0);
      status.runs_planned = total_runs;
      status.share_done = (static_cast<double>(finished) * o.steps + steps) / total_steps;
      status.seconds = std::chrono::duration<double>(Clock::now() - start).count();
      status.steps_per_second = status.seconds > 0 ? status.share_done * total_steps / status.seconds : 0.0;
      progress(status);
    };
    TrainedStudent t = train_student(cell.student, m, s, data, make_pool(cell, m, data.train.labels, seed), o,
                                     step_progress);
    ++finished;
    return done[key] = Trained{t.log, t.net, false, {}};
  };

  StudyResult result;
  result.teacher_test_accuracy = teacher_test_accuracy;
  for (const PlannedCell& p : cells) {
    for (const Method& m : p.methods) {
      ArmResult arm;
      arm.cell = p.cell;
      arm.method = m;
      if (uses_teacher(m)) {
        // Selection on seed 0's validation accuracy (each run at its best checkpoint); ties keep
        // the earlier grid point.
        double best = -1;
        for (const LossSetting& s : grid) {
          const Trained& t = train(p.cell, m, s, 0);
          arm.grid.push_back({s, t.log.best_validation_accuracy, t.log.best_step});
          if (t.log.best_validation_accuracy > best) {
            best = t.log.best_validation_accuracy;
            arm.chosen = s;
          }
        }
      }
      std::vector<double> acc, f1, nll, ece, val;
      for (int seed = 0; seed < options.seeds; ++seed) {
        Trained& t = train(p.cell, m, arm.chosen, static_cast<std::uint64_t>(seed));
        SeedRun r;
        r.seed = static_cast<std::uint64_t>(seed);
        r.log = t.log;
        if (!t.tested) {
          // The test set, read for the first time, for a run whose every choice is made.
          t.test = classification_metrics(predict_logits(*t.net, data.test.images, options.train.device),
                                          data.test.labels);
          t.tested = true;
        }
        r.test = t.test;
        arm.runs.push_back(r);
        acc.push_back(r.test.accuracy);
        f1.push_back(r.test.macro_f1);
        nll.push_back(r.test.nll);
        ece.push_back(r.test.ece);
        val.push_back(r.log.best_validation_accuracy);
      }
      const MeanStd a = mean_std(acc);
      arm.accuracy_mean = a.mean;
      arm.accuracy_std = a.std;
      arm.macro_f1 = mean_std(f1).mean;
      arm.nll = mean_std(nll).mean;
      arm.ece = mean_std(ece).mean;
      arm.validation_accuracy = mean_std(val).mean;
      result.arms.push_back(arm);
    }
    // Paired differences against this cell's controls.
    const auto find = [&](const std::string& name) -> const ArmResult* {
      for (const ArmResult& a : result.arms)
        if (a.method.name == name && a.cell == p.cell) return &a;
      return nullptr;
    };
    const ArmResult* ce = find("ce");
    const ArmResult* ce_ls = find("ce_ls");
    const ArmResult* pseudo = find("pseudo");
    for (ArmResult& a : result.arms) {
      if (!(a.cell == p.cell)) continue;
      if (&a != ce) a.vs_ce = paired(a, ce);
      if (&a != ce_ls) a.vs_ce_ls = paired(a, ce_ls);
      if (&a != pseudo) a.vs_pseudo = paired(a, pseudo);
      if (ce && &a != ce && teacher_test_accuracy > ce->accuracy_mean) {
        a.has_gap = true;
        a.gap_closed = a.vs_ce.mean / (teacher_test_accuracy - ce->accuracy_mean);
      }
    }
    // The networks of grid points not chosen are no longer needed.
    for (auto& [key, t] : done) t.net.reset();
  }
  result.runs_trained = finished;
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace fusedkd::demo
