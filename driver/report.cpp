#include "report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

namespace fusedkd::demo {

namespace {

std::string fixed(double value, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, value);
  return buffer;
}

std::string signed_points(double v) { return (v >= 0 ? "+" : "") + fixed(100.0 * v, 2); }

std::string general(double v) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%g", v);
  return buffer;
}

std::string escape_json(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
      out += buffer;
    } else {
      out += c;
    }
  }
  return out;
}

std::string escape_xml(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.17g", v);
  return buffer;
}

std::string quoted(const std::string& s) { return "\"" + escape_json(s) + "\""; }

void json_metrics(std::ostringstream& o, const ClassificationMetrics& m) {
  o << "{\"accuracy\": " << number(m.accuracy) << ", \"macro_precision\": " << number(m.macro_precision)
    << ", \"macro_recall\": " << number(m.macro_recall) << ", \"macro_f1\": " << number(m.macro_f1)
    << ", \"nll\": " << number(m.nll) << ", \"ece\": " << number(m.ece) << ", \"f1_per_class\": [";
  for (std::size_t c = 0; c < m.f1.size(); ++c) o << (c ? ", " : "") << number(m.f1[c]);
  o << "], \"confusion\": [";
  const std::size_t classes = m.f1.size();
  for (std::size_t r = 0; r < classes; ++r) {
    o << (r ? ", " : "") << "[";
    for (std::size_t c = 0; c < classes; ++c) o << (c ? ", " : "") << m.confusion[r * classes + c];
    o << "]";
  }
  o << "]}";
}

void json_paired(std::ostringstream& o, const char* name, const Paired& p) {
  o << "\"" << name << "\": ";
  if (!p.present) {
    o << "null";
    return;
  }
  o << "{\"mean\": " << number(p.mean) << ", \"std\": " << number(p.std) << ", \"wins\": " << p.wins
    << ", \"seeds\": " << p.seeds << "}";
}

// A categorical colour per series (Okabe-Ito, distinguishable with common colour blindness).
const char* colour(std::size_t i) {
  static const char* palette[] = {"#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00",
                                  "#0072B2", "#CC79A7", "#999999", "#F0E442"};
  return palette[i % (sizeof palette / sizeof palette[0])];
}

std::string paired_text(const Paired& p) {
  if (!p.present) return "—";
  return signed_points(p.mean) + " ± " + fixed(100.0 * p.std, 2) + " (" + std::to_string(p.wins) + "/" +
         std::to_string(p.seeds) + ")";
}

std::string list(const std::vector<double>& values) {
  std::string s;
  for (std::size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + general(values[i]);
  return s;
}

}  // namespace

bool meets_goal(const ArmResult& arm) {
  return arm.vs_ce.present && arm.vs_ce.seeds >= 2 && arm.vs_ce.wins == arm.vs_ce.seeds &&
         arm.vs_ce.mean > 2.0 * arm.vs_ce.std && arm.has_gap && arm.gap_closed >= 0.3;
}

std::string markdown_report(const StudySetup& setup, const StudyResult& result) {
  const StudyOptions& op = setup.options;
  std::ostringstream o;
  o << "# Fashion-MNIST distillation study\n\n";
  o << "Command: `" << setup.command << "`\n\n";
  o << "Data: Fashion-MNIST's 60,000 training images split, stratified and fixed by split seed " << setup.split_seed
    << ", into " << setup.train_images << " for training and " << setup.validation_images
    << " for validation; the " << setup.test_images
    << " test images are read once per final run, after every choice (grid point, checkpoint) was made on "
       "validation.\n\n";
  o << "Teacher: " << setup.teacher << "; validation accuracy " << fixed(100.0 * setup.teacher_validation_accuracy, 2)
    << "%, test accuracy " << fixed(100.0 * setup.teacher_test.accuracy, 2) << "%, macro-F1 "
    << fixed(100.0 * setup.teacher_test.macro_f1, 2) << "%, NLL " << fixed(setup.teacher_test.nll, 3) << ", ECE "
    << fixed(100.0 * setup.teacher_test.ece, 2) << "%.\n\n";
  o << "Students: ";
  for (std::size_t i = 0; i < op.students.size(); ++i)
    o << (i ? "; " : "") << describe_student(op.students[i]);
  o << ". Every run: " << op.train.steps << " Adam steps (learning rate " << general(op.train.learning_rate)
    << ", batch " << op.train.batch_size << "), validation accuracy checked " << op.train.evaluations
    << " times, the best checkpoint kept; seeds 0.." << op.seeds - 1
    << " (a seed fixes the labelled subset, the initial weights and the batch order; every method of a cell "
       "starts from the same weights for a seed).\n\n";
  o << "Distillation: loss form `" << form_name(op.form) << "` ("
    << (op.form == LossForm::Balanced ? "(1 - alpha) * CE + alpha * T^2 * D" : "CE + alpha * D, the seed's")
    << "); temperature and alpha chosen per method and cell on seed 0's validation accuracy over T in {"
    << list(op.temperatures) << "} x alpha in {" << list(op.alphas) << "}. Device " << setup.device << ", "
    << setup.threads << " threads; " << result.runs_trained << " runs in " << fixed(result.seconds / 60.0, 1)
    << " min.\n\n";

  o << "## Where distillation meets the goal\n\n"
       "Goal: a seed loss (`kd_kl`, `kd_mse`) more accurate than plain CE on every seed, by more than twice the "
       "standard deviation of the paired difference, closing at least 30% of the gap to the teacher. Differences "
       "are in accuracy points, mean ± standard deviation over seeds of the paired difference (seeds won).\n\n";
  o << "| cell | method | T | alpha | test accuracy | vs ce | gap closed | vs ce_ls | vs pseudo | goal |\n";
  o << "|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n";
  for (const ArmResult& a : result.arms) {
    if (!a.method.seed_loss) continue;
    o << "| " << cell_name(a.cell) << " | " << a.method.name << " | " << general(a.chosen.temperature) << " | "
      << general(a.chosen.alpha) << " | " << fixed(100.0 * a.accuracy_mean, 2) << " ± " << fixed(100.0 * a.accuracy_std, 2)
      << " | " << paired_text(a.vs_ce) << " | " << (a.has_gap ? fixed(100.0 * a.gap_closed, 0) + "%" : "—") << " | "
      << paired_text(a.vs_ce_ls) << " | " << paired_text(a.vs_pseudo) << " | " << (meets_goal(a) ? "yes" : "no")
      << " |\n";
  }

  for (std::size_t i = 0; i < result.arms.size();) {
    const Cell cell = result.arms[i].cell;
    o << "\n## " << cell_name(cell) << "\n\n";
    o << "| method | T | alpha | validation | test accuracy | vs ce | vs ce_ls | vs pseudo | gap closed | macro F1 | NLL "
         "| ECE | best step |\n";
    o << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    std::size_t end = i;
    while (end < result.arms.size() && result.arms[end].cell == cell) ++end;
    for (std::size_t k = i; k < end; ++k) {
      const ArmResult& a = result.arms[k];
      const bool teacher = uses_teacher(a.method);
      std::string steps;
      for (const SeedRun& r : a.runs) steps += (steps.empty() ? "" : ", ") + std::to_string(r.log.best_step);
      o << "| " << a.method.name << " | " << (teacher ? general(a.chosen.temperature) : "—") << " | "
        << (teacher ? general(a.chosen.alpha) : "—") << " | " << fixed(100.0 * a.validation_accuracy, 2) << " | "
        << fixed(100.0 * a.accuracy_mean, 2) << " ± " << fixed(100.0 * a.accuracy_std, 2) << " | "
        << paired_text(a.vs_ce) << " | " << paired_text(a.vs_ce_ls) << " | " << paired_text(a.vs_pseudo) << " | "
        << (a.has_gap ? fixed(100.0 * a.gap_closed, 0) + "%" : "—") << " | " << fixed(100.0 * a.macro_f1, 2) << " | "
        << fixed(a.nll, 3) << " | " << fixed(100.0 * a.ece, 2) << " | " << steps << " |\n";
    }
    // The grid: seed 0's best validation accuracy at every point.
    bool header = false;
    for (std::size_t k = i; k < end; ++k) {
      const ArmResult& a = result.arms[k];
      if (a.grid.empty()) continue;
      if (!header) {
        o << "\nValidation accuracy (seed 0) over the grid:\n\n| method |";
        for (const Trial& t : a.grid) o << " T=" << general(t.setting.temperature) << " a=" << general(t.setting.alpha) << " |";
        o << "\n|---|";
        for (std::size_t g = 0; g < a.grid.size(); ++g) o << "---:|";
        o << "\n";
        header = true;
      }
      o << "| " << a.method.name << " |";
      for (const Trial& t : a.grid) {
        const bool chosen = t.setting.temperature == a.chosen.temperature && t.setting.alpha == a.chosen.alpha;
        o << " " << (chosen ? "**" : "") << fixed(100.0 * t.validation_accuracy, 2) << (chosen ? "**" : "") << " |";
      }
      o << "\n";
    }
    i = end;
  }
  o << "\nColumns: validation and test accuracy in %, mean over seeds (test ± sample standard deviation); vs X: "
       "this method's test accuracy minus X's on the same seed, mean ± standard deviation (seeds where this "
       "method is more accurate); gap closed: the mean gain over ce as a share of the teacher's lead over ce; "
       "macro-F1 and ECE (15 bins) in %; best step: the checkpoint kept, per seed.\n\nMethods:\n\n";
  std::vector<std::string> seen;
  for (const ArmResult& a : result.arms) {
    if (std::find(seen.begin(), seen.end(), a.method.name) != seen.end()) continue;
    seen.push_back(a.method.name);
    o << "- `" << a.method.name << "`: " << a.method.description << "\n";
  }
  return o.str();
}

std::string json_report(const StudySetup& setup, const StudyResult& result) {
  const StudyOptions& op = setup.options;
  std::ostringstream o;
  o << "{\n  \"setup\": {\"command\": " << quoted(setup.command) << ", \"device\": " << quoted(setup.device)
    << ", \"threads\": " << setup.threads << ", \"train_images\": " << setup.train_images
    << ", \"validation_images\": " << setup.validation_images << ", \"test_images\": " << setup.test_images
    << ", \"split_seed\": " << setup.split_seed << ", \"teacher\": " << quoted(setup.teacher)
    << ", \"steps\": " << op.train.steps << ", \"evaluations\": " << op.train.evaluations
    << ", \"batch_size\": " << op.train.batch_size << ", \"learning_rate\": " << number(op.train.learning_rate)
    << ", \"seeds\": " << op.seeds << ", \"form\": " << quoted(form_name(op.form)) << ", \"temperatures\": ["
    << list(op.temperatures) << "], \"alphas\": [" << list(op.alphas) << "], \"students\": [";
  for (std::size_t i = 0; i < op.students.size(); ++i)
    o << (i ? ", " : "") << "{\"name\": " << quoted(student_name(op.students[i]))
      << ", \"description\": " << quoted(describe_student(op.students[i])) << "}";
  o << "], \"classes\": [";
  for (std::size_t c = 0; c < kFashionClassNames.size(); ++c) o << (c ? ", " : "") << quoted(kFashionClassNames[c]);
  o << "], \"runs_trained\": " << result.runs_trained << ", \"seconds\": " << number(result.seconds) << "},\n";
  o << "  \"teacher\": {\"validation_accuracy\": " << number(setup.teacher_validation_accuracy) << ", \"test\": ";
  json_metrics(o, setup.teacher_test);
  o << "},\n  \"arms\": [";
  for (std::size_t i = 0; i < result.arms.size(); ++i) {
    const ArmResult& a = result.arms[i];
    o << (i ? "," : "") << "\n    {\"student\": " << quoted(student_name(a.cell.student))
      << ", \"budget\": " << a.cell.budget << ", \"regime\": " << quoted(regime_name(a.cell.regime))
      << ", \"method\": " << quoted(a.method.name) << ", \"description\": " << quoted(a.method.description);
    if (uses_teacher(a.method)) {
      o << ", \"chosen\": {\"temperature\": " << number(a.chosen.temperature) << ", \"alpha\": "
        << number(a.chosen.alpha) << "}, \"grid\": [";
      for (std::size_t g = 0; g < a.grid.size(); ++g)
        o << (g ? ", " : "") << "{\"temperature\": " << number(a.grid[g].setting.temperature)
          << ", \"alpha\": " << number(a.grid[g].setting.alpha) << ", \"validation_accuracy\": "
          << number(a.grid[g].validation_accuracy) << ", \"best_step\": " << a.grid[g].best_step << "}";
      o << "]";
    }
    o << ", \"accuracy\": {\"mean\": " << number(a.accuracy_mean) << ", \"std\": " << number(a.accuracy_std)
      << "}, \"validation_accuracy\": " << number(a.validation_accuracy) << ", \"macro_f1\": " << number(a.macro_f1)
      << ", \"nll\": " << number(a.nll) << ", \"ece\": " << number(a.ece) << ", ";
    json_paired(o, "vs_ce", a.vs_ce);
    o << ", ";
    json_paired(o, "vs_ce_ls", a.vs_ce_ls);
    o << ", ";
    json_paired(o, "vs_pseudo", a.vs_pseudo);
    o << ", \"gap_closed\": " << (a.has_gap ? number(a.gap_closed) : "null")
      << ", \"meets_goal\": " << (meets_goal(a) ? "true" : "false") << ", \"runs\": [";
    for (std::size_t r = 0; r < a.runs.size(); ++r) {
      const SeedRun& run = a.runs[r];
      o << (r ? "," : "") << "\n      {\"seed\": " << run.seed << ", \"best_step\": " << run.log.best_step
        << ", \"best_validation_accuracy\": " << number(run.log.best_validation_accuracy)
        << ", \"seconds\": " << number(run.log.seconds) << ", \"checkpoints\": [";
      for (std::size_t c = 0; c < run.log.checkpoints.size(); ++c) {
        const Checkpoint& k = run.log.checkpoints[c];
        o << (c ? ", " : "") << "{\"step\": " << k.step << ", \"train_loss\": " << number(k.train_loss)
          << ", \"validation_accuracy\": " << number(k.validation_accuracy) << "}";
      }
      o << "], \"test\": ";
      json_metrics(o, run.test);
      o << "}";
    }
    o << "]}";
  }
  o << "\n  ]\n}\n";
  return o.str();
}

std::string svg_plot(const StudySetup& setup, const StudyResult& result) {
  constexpr double kPanelWidth = 430, kGap = 200, kLeft = 60, kTop = 40, kBottom = 380, kHeight = 440;
  const std::vector<StudentKind>& students = setup.options.students;
  const double width = kLeft + static_cast<double>(students.size()) * (kPanelWidth + kGap);
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << kHeight
    << "\" viewBox=\"0 0 " << width << " " << kHeight << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  if (result.arms.empty()) {
    o << "<text x=\"20\" y=\"40\">no student runs</text>\n</svg>\n";
    return o.str();
  }
  // One accuracy axis for every panel: the range of the plotted values and the teacher, padded.
  const double teacher = result.teacher_test_accuracy;
  double lo = teacher, hi = teacher;
  for (const ArmResult& a : result.arms) {
    lo = std::min(lo, a.accuracy_mean - a.accuracy_std);
    hi = std::max(hi, a.accuracy_mean + a.accuracy_std);
  }
  const double pad = std::max(0.005, 0.04 * (hi - lo));
  lo = std::floor((lo - pad) * 100.0) / 100.0;
  hi = std::ceil((hi + pad) * 100.0) / 100.0;
  const auto y_of = [&](double v) { return kBottom - (v - lo) / (hi - lo) * (kBottom - kTop); };
  const double tick = (hi - lo) > 0.3 ? 0.05 : ((hi - lo) > 0.1 ? 0.02 : 0.01);

  for (std::size_t panel = 0; panel < students.size(); ++panel) {
    const StudentKind student = students[panel];
    const double x0 = kLeft + static_cast<double>(panel) * (kPanelWidth + kGap);
    std::vector<std::int64_t> budgets;
    for (const ArmResult& a : result.arms)
      if (a.cell.student == student && std::find(budgets.begin(), budgets.end(), a.cell.budget) == budgets.end())
        budgets.push_back(a.cell.budget);
    std::sort(budgets.begin(), budgets.end());
    const auto x_of = [&](std::int64_t budget) {
      const std::size_t i = std::find(budgets.begin(), budgets.end(), budget) - budgets.begin();
      return budgets.size() <= 1 ? x0 + kPanelWidth / 2
                                 : x0 + 30 + (kPanelWidth - 60) * static_cast<double>(i) /
                                                 static_cast<double>(budgets.size() - 1);
    };
    o << "<text x=\"" << x0 + kPanelWidth / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"13\">"
      << escape_xml(student_name(student) + " student: test accuracy against labelled images") << "</text>\n";
    for (double v = std::ceil(lo / tick - 1e-9) * tick; v <= hi + 1e-9; v += tick) {
      o << "<line x1=\"" << x0 << "\" x2=\"" << x0 + kPanelWidth << "\" y1=\"" << y_of(v) << "\" y2=\"" << y_of(v)
        << "\" stroke=\"#e0e0e0\"/>\n<text x=\"" << x0 - 6 << "\" y=\"" << y_of(v) + 4 << "\" text-anchor=\"end\">"
        << fixed(100.0 * v, 0) << "%</text>\n";
    }
    o << "<line x1=\"" << x0 << "\" x2=\"" << x0 << "\" y1=\"" << kTop << "\" y2=\"" << kBottom
      << "\" stroke=\"black\"/>\n<line x1=\"" << x0 << "\" x2=\"" << x0 + kPanelWidth << "\" y1=\"" << kBottom
      << "\" y2=\"" << kBottom << "\" stroke=\"black\"/>\n";
    for (const std::int64_t b : budgets)
      o << "<text x=\"" << x_of(b) << "\" y=\"" << kBottom + 16 << "\" text-anchor=\"middle\">" << b << "</text>\n";
    o << "<text x=\"" << x0 + kPanelWidth / 2 << "\" y=\"" << kBottom + 34
      << "\" text-anchor=\"middle\">labelled training images</text>\n";
    o << "<line class=\"teacher\" x1=\"" << x0 << "\" x2=\"" << x0 + kPanelWidth << "\" y1=\"" << y_of(teacher)
      << "\" y2=\"" << y_of(teacher) << "\" stroke=\"black\" stroke-dasharray=\"5,4\"/>\n<text x=\""
      << x0 + kPanelWidth - 2 << "\" y=\"" << y_of(teacher) - 4 << "\" text-anchor=\"end\">teacher</text>\n";

    // Series: a control is one line (its runs are the same in every regime); a method that uses the
    // other training images has one line per regime; the full budget belongs to every line.
    std::vector<std::string> names;
    std::map<std::string, std::vector<const ArmResult*>> series;
    for (const ArmResult& a : result.arms) {
      if (a.cell.student != student) continue;
      const bool per_regime = a.method.target == Target::Teacher || a.method.target == Target::PseudoLabels;
      std::vector<std::string> keys;
      if (!per_regime || a.cell.regime == Regime::Same) keys.push_back(a.method.name + (per_regime ? " (same)" : ""));
      if (per_regime && a.cell.regime == Regime::Transfer) keys.push_back(a.method.name + " (transfer)");
      if (per_regime && a.cell.regime == Regime::Full) {
        for (const Regime r : setup.options.regimes)
          if (a.method.target != Target::PseudoLabels)
            keys.push_back(a.method.name + (r == Regime::Same ? " (same)" : " (transfer)"));
      }
      if (!per_regime && a.cell.regime == Regime::Transfer) keys.clear();  // the same runs as "same"
      for (const std::string& k : keys) {
        if (!series.count(k)) names.push_back(k);
        series[k].push_back(&a);
      }
    }
    for (std::size_t s = 0; s < names.size(); ++s) {
      std::vector<const ArmResult*> points = series[names[s]];
      std::sort(points.begin(), points.end(),
                [](const ArmResult* a, const ArmResult* b) { return a->cell.budget < b->cell.budget; });
      const bool dashed = names[s].find("(transfer)") != std::string::npos;
      o << "<polyline class=\"series\" fill=\"none\" stroke=\"" << colour(s) << "\" stroke-width=\"1.6\""
        << (dashed ? " stroke-dasharray=\"6,3\"" : "") << " points=\"";
      for (std::size_t p = 0; p < points.size(); ++p)
        o << (p ? " " : "") << x_of(points[p]->cell.budget) + (static_cast<double>(s) - names.size() / 2.0) * 2.0 << ","
          << y_of(points[p]->accuracy_mean);
      o << "\"><title>" << escape_xml(names[s]) << "</title></polyline>\n";
      for (const ArmResult* a : points) {
        const double x = x_of(a->cell.budget) + (static_cast<double>(s) - names.size() / 2.0) * 2.0;
        o << "<circle cx=\"" << x << "\" cy=\"" << y_of(a->accuracy_mean) << "\" r=\"2.5\" fill=\"" << colour(s)
          << "\"><title>" << escape_xml(names[s]) << ", " << a->cell.budget << " labels: "
          << fixed(100.0 * a->accuracy_mean, 2) << "% ± " << fixed(100.0 * a->accuracy_std, 2) << "</title></circle>\n";
        if (a->accuracy_std > 0)
          o << "<line class=\"errorbar\" x1=\"" << x << "\" x2=\"" << x << "\" y1=\""
            << y_of(a->accuracy_mean - a->accuracy_std) << "\" y2=\"" << y_of(a->accuracy_mean + a->accuracy_std)
            << "\" stroke=\"" << colour(s) << "\"/>\n";
      }
      const double ly = kTop + 10 + 15.0 * static_cast<double>(s);
      o << "<line x1=\"" << x0 + kPanelWidth + 10 << "\" x2=\"" << x0 + kPanelWidth + 30 << "\" y1=\"" << ly - 4
        << "\" y2=\"" << ly - 4 << "\" stroke=\"" << colour(s) << "\" stroke-width=\"2\""
        << (dashed ? " stroke-dasharray=\"6,3\"" : "") << "/><text x=\"" << x0 + kPanelWidth + 34 << "\" y=\"" << ly
        << "\">" << escape_xml(names[s]) << "</text>\n";
    }
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace fusedkd::demo
