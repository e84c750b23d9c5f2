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

std::string percent(const MeanStd& v, bool with_std) {
  std::string s = fixed(100.0 * v.mean, 2);
  if (with_std) s += " ± " + fixed(100.0 * v.std, 2);
  return s;
}

std::string count_of(long long n, const char* noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
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

void json_mean_std(std::ostringstream& o, const char* name, const MeanStd& v) {
  o << "\"" << name << "\": {\"mean\": " << number(v.mean) << ", \"std\": " << number(v.std) << "}";
}

// A categorical colour per series (Okabe-Ito, distinguishable with common colour blindness).
const char* colour(std::size_t i) {
  static const char* palette[] = {"#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442",
                                  "#0072B2", "#D55E00", "#CC79A7", "#999999"};
  return palette[i % (sizeof palette / sizeof palette[0])];
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

std::vector<MethodSummary> summarize(const std::vector<RunResult>& runs, const std::vector<Method>& methods) {
  std::map<std::uint64_t, double> baseline;  // seed -> accuracy of plain training
  for (const RunResult& r : runs)
    if (r.method == "ce") baseline[r.seed] = r.test.accuracy;
  std::vector<MethodSummary> out;
  for (const Method& method : methods) {
    MethodSummary s;
    s.method = method.name;
    s.description = method.description;
    std::vector<double> acc, prec, rec, f1, nll, ece, gains;
    double seconds = 0;
    int epochs = 0;
    std::vector<std::vector<double>> by_epoch;
    for (const RunResult& r : runs) {
      if (r.method != method.name) continue;
      ++s.runs;
      acc.push_back(r.test.accuracy);
      prec.push_back(r.test.macro_precision);
      rec.push_back(r.test.macro_recall);
      f1.push_back(r.test.macro_f1);
      nll.push_back(r.test.nll);
      ece.push_back(r.test.ece);
      for (const EpochRecord& e : r.epochs) {
        if (by_epoch.size() < static_cast<std::size_t>(e.epoch)) by_epoch.resize(e.epoch);
        by_epoch[e.epoch - 1].push_back(e.test_accuracy);
        seconds += e.seconds;
        ++epochs;
      }
      const auto base = baseline.find(r.seed);
      if (method.name != "ce" && base != baseline.end()) {
        gains.push_back(r.test.accuracy - base->second);
        ++s.seeds_compared;
        if (r.test.accuracy > base->second) ++s.seeds_better;
      }
    }
    if (s.runs == 0) continue;
    s.accuracy = mean_std(acc);
    s.macro_precision = mean_std(prec);
    s.macro_recall = mean_std(rec);
    s.macro_f1 = mean_std(f1);
    s.nll = mean_std(nll);
    s.ece = mean_std(ece);
    s.has_baseline = !gains.empty();
    s.accuracy_gain = mean_std(gains).mean;
    for (const std::vector<double>& e : by_epoch) s.mean_accuracy_by_epoch.push_back(mean_std(e).mean);
    s.seconds_per_epoch = epochs ? seconds / epochs : 0.0;
    out.push_back(s);
  }
  return out;
}

std::string markdown_report(const DemoSetup& setup, const RunResult& teacher,
                            const std::vector<MethodSummary>& summaries) {
  std::ostringstream o;
  const bool with_std = setup.seeds > 1;
  o << "Fashion-MNIST, " << setup.train_images << " training and " << setup.test_images << " test images; "
    << "teacher CNN (" << setup.teacher_parameters << " parameters, " << count_of(setup.teacher_epochs, "epoch")
    << "), student CNN (" << setup.student_parameters << " parameters, " << count_of(setup.student_epochs, "epoch")
    << ", " << count_of(setup.seeds, "seed") << "); Adam 1e-3, batch "
    << setup.batch_size << ", device " << setup.device << ", " << setup.threads << " threads.\n\n";
  o << "Teacher: accuracy " << fixed(100.0 * teacher.test.accuracy, 2) << "%, macro-F1 "
    << fixed(100.0 * teacher.test.macro_f1, 2) << "%, NLL " << fixed(teacher.test.nll, 3) << ", ECE "
    << fixed(100.0 * teacher.test.ece, 2) << "%.\n\n";
  o << "Students on the test set" << (with_std ? " (mean ± sample standard deviation over seeds)" : "")
    << "; percentages except NLL:\n\n";
  o << "| method | accuracy | vs plain (seeds better) | macro precision | macro recall | macro F1 | NLL | ECE | s/epoch |\n";
  o << "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const MethodSummary& s : summaries) {
    std::string gain = "—";
    if (s.has_baseline) {
      gain = (s.accuracy_gain >= 0 ? "+" : "") + fixed(100.0 * s.accuracy_gain, 2) + " (" +
             std::to_string(s.seeds_better) + "/" + std::to_string(s.seeds_compared) + ")";
    }
    o << "| " << s.method << " | " << percent(s.accuracy, with_std) << " | " << gain << " | "
      << percent(s.macro_precision, with_std) << " | " << percent(s.macro_recall, with_std) << " | "
      << percent(s.macro_f1, with_std) << " | " << fixed(s.nll.mean, 3) << " | " << percent(s.ece, false) << " | "
      << fixed(s.seconds_per_epoch, 1) << " |\n";
  }
  o << "\nMethods:\n\n";
  for (const MethodSummary& s : summaries) o << "- `" << s.method << "`: " << s.description << "\n";
  return o.str();
}

std::string json_report(const DemoSetup& setup, const RunResult& teacher, const std::vector<MethodSummary>& summaries,
                        const std::vector<RunResult>& runs) {
  std::ostringstream o;
  o << "{\n  \"setup\": {\"device\": \"" << escape_json(setup.device) << "\", \"threads\": " << setup.threads
    << ", \"train_images\": " << setup.train_images << ", \"test_images\": " << setup.test_images
    << ", \"teacher_epochs\": " << setup.teacher_epochs << ", \"student_epochs\": " << setup.student_epochs
    << ", \"seeds\": " << setup.seeds << ", \"batch_size\": " << setup.batch_size
    << ", \"teacher_parameters\": " << setup.teacher_parameters
    << ", \"student_parameters\": " << setup.student_parameters << ", \"classes\": [";
  for (std::size_t c = 0; c < kFashionClassNames.size(); ++c)
    o << (c ? ", " : "") << "\"" << escape_json(kFashionClassNames[c]) << "\"";
  o << "]},\n";
  o << "  \"teacher\": ";
  json_metrics(o, teacher.test);
  o << ",\n  \"summaries\": [";
  for (std::size_t i = 0; i < summaries.size(); ++i) {
    const MethodSummary& s = summaries[i];
    o << (i ? "," : "") << "\n    {\"method\": \"" << escape_json(s.method) << "\", \"description\": \""
      << escape_json(s.description) << "\", \"runs\": " << s.runs << ", ";
    json_mean_std(o, "accuracy", s.accuracy);
    o << ", ";
    json_mean_std(o, "macro_precision", s.macro_precision);
    o << ", ";
    json_mean_std(o, "macro_recall", s.macro_recall);
    o << ", ";
    json_mean_std(o, "macro_f1", s.macro_f1);
    o << ", ";
    json_mean_std(o, "nll", s.nll);
    o << ", ";
    json_mean_std(o, "ece", s.ece);
    o << ", \"accuracy_gain_vs_ce\": " << (s.has_baseline ? number(s.accuracy_gain) : "null")
      << ", \"seeds_better\": " << s.seeds_better << ", \"seeds_compared\": " << s.seeds_compared
      << ", \"seconds_per_epoch\": " << number(s.seconds_per_epoch) << "}";
  }
  o << "\n  ],\n  \"runs\": [";
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const RunResult& r = runs[i];
    o << (i ? "," : "") << "\n    {\"method\": \"" << escape_json(r.method) << "\", \"seed\": " << r.seed
      << ", \"train_seconds\": " << number(r.train_seconds) << ", \"epochs\": [";
    for (std::size_t e = 0; e < r.epochs.size(); ++e)
      o << (e ? ", " : "") << "{\"epoch\": " << r.epochs[e].epoch << ", \"train_loss\": "
        << number(r.epochs[e].train_loss) << ", \"test_accuracy\": " << number(r.epochs[e].test_accuracy)
        << ", \"seconds\": " << number(r.epochs[e].seconds) << "}";
    o << "], \"test\": ";
    json_metrics(o, r.test);
    o << "}";
  }
  o << "\n  ]\n}\n";
  return o.str();
}

std::string svg_plot(const RunResult& teacher, const std::vector<MethodSummary>& summaries) {
  constexpr double kWidth = 1100, kHeight = 420, kTop = 40, kBottom = 330, kLeft = 60;
  constexpr double kPanel = 400;  // width of each panel's plot area
  constexpr double kRightPanel = kLeft + kPanel + 90;
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << kHeight
    << "\" viewBox=\"0 0 " << kWidth << " " << kHeight << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  if (summaries.empty()) {
    o << "<text x=\"20\" y=\"40\">no student runs</text>\n</svg>\n";
    return o.str();
  }

  // The shared accuracy axis of both panels: the range of every plotted value, padded.
  double lo = teacher.test.accuracy, hi = teacher.test.accuracy;
  for (const MethodSummary& s : summaries) {
    for (const MeanStd& v : {s.accuracy, s.macro_f1}) {
      lo = std::min(lo, v.mean - v.std);
      hi = std::max(hi, v.mean + v.std);
    }
    for (const double a : s.mean_accuracy_by_epoch) {
      lo = std::min(lo, a);
      hi = std::max(hi, a);
    }
  }
  const double pad = std::max(0.005, 0.05 * (hi - lo));
  lo = std::floor((lo - pad) * 100.0) / 100.0;
  hi = std::ceil((hi + pad) * 100.0) / 100.0;
  const auto y_of = [&](double v) { return kBottom - (v - lo) / (hi - lo) * (kBottom - kTop); };
  const double step = (hi - lo) > 0.2 ? 0.05 : ((hi - lo) > 0.06 ? 0.02 : 0.01);

  const auto axis = [&](double x0, const std::string& title) {
    o << "<text x=\"" << x0 + kPanel / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"13\">" << escape_xml(title)
      << "</text>\n";
    for (double v = lo; v <= hi + 1e-9; v += step) {
      o << "<line x1=\"" << x0 << "\" x2=\"" << x0 + kPanel << "\" y1=\"" << y_of(v) << "\" y2=\"" << y_of(v)
        << "\" stroke=\"#e0e0e0\"/>\n";
      o << "<text x=\"" << x0 - 6 << "\" y=\"" << y_of(v) + 4 << "\" text-anchor=\"end\">" << fixed(100.0 * v, 0)
        << "%</text>\n";
    }
    o << "<line x1=\"" << x0 << "\" x2=\"" << x0 << "\" y1=\"" << kTop << "\" y2=\"" << kBottom
      << "\" stroke=\"black\"/>\n";
    o << "<line x1=\"" << x0 << "\" x2=\"" << x0 + kPanel << "\" y1=\"" << kBottom << "\" y2=\"" << kBottom
      << "\" stroke=\"black\"/>\n";
    o << "<line x1=\"" << x0 << "\" x2=\"" << x0 + kPanel << "\" y1=\"" << y_of(teacher.test.accuracy) << "\" y2=\""
      << y_of(teacher.test.accuracy) << "\" stroke=\"black\" stroke-dasharray=\"5,4\"/>\n";
    o << "<text x=\"" << x0 + kPanel - 2 << "\" y=\"" << y_of(teacher.test.accuracy) - 4
      << "\" text-anchor=\"end\">teacher accuracy</text>\n";
  };

  // Left: accuracy and macro-F1 bars per method.
  axis(kLeft, "Students on the test set (axis zoomed)");
  const double group = kPanel / static_cast<double>(summaries.size());
  const double bar = std::min(18.0, group * 0.35);
  for (std::size_t i = 0; i < summaries.size(); ++i) {
    const MethodSummary& s = summaries[i];
    const double centre = kLeft + group * (static_cast<double>(i) + 0.5);
    const MeanStd* values[2] = {&s.accuracy, &s.macro_f1};
    for (int k = 0; k < 2; ++k) {
      const double x = centre + (k == 0 ? -bar : 0.0);
      const double top = y_of(values[k]->mean);
      o << "<rect class=\"bar\" x=\"" << x << "\" y=\"" << top << "\" width=\"" << bar << "\" height=\""
        << kBottom - top << "\" fill=\"" << (k == 0 ? "#0072B2" : "#E69F00") << "\"><title>" << escape_xml(s.method)
        << (k == 0 ? " accuracy " : " macro-F1 ") << fixed(100.0 * values[k]->mean, 2) << "%</title></rect>\n";
      if (values[k]->std > 0) {
        const double xc = x + bar / 2;
        o << "<line x1=\"" << xc << "\" x2=\"" << xc << "\" y1=\"" << y_of(values[k]->mean - values[k]->std)
          << "\" y2=\"" << y_of(values[k]->mean + values[k]->std) << "\" stroke=\"black\"/>\n";
      }
    }
    o << "<text transform=\"translate(" << centre << "," << kBottom + 8 << ") rotate(40)\">" << escape_xml(s.method)
      << "</text>\n";
  }
  o << "<rect x=\"" << kLeft + 8 << "\" y=\"" << kTop + 4 << "\" width=\"10\" height=\"10\" fill=\"#0072B2\"/>"
    << "<text x=\"" << kLeft + 22 << "\" y=\"" << kTop + 13 << "\">accuracy</text>\n";
  o << "<rect x=\"" << kLeft + 88 << "\" y=\"" << kTop + 4 << "\" width=\"10\" height=\"10\" fill=\"#E69F00\"/>"
    << "<text x=\"" << kLeft + 102 << "\" y=\"" << kTop + 13 << "\">macro-F1</text>\n";

  // Right: test accuracy after each epoch.
  axis(kRightPanel, "Student test accuracy after each epoch");
  std::size_t epochs = 0;
  for (const MethodSummary& s : summaries) epochs = std::max(epochs, s.mean_accuracy_by_epoch.size());
  const auto x_of = [&](std::size_t e) {
    return epochs <= 1 ? kRightPanel + kPanel / 2
                       : kRightPanel + 10 + (kPanel - 20) * static_cast<double>(e) / static_cast<double>(epochs - 1);
  };
  for (std::size_t e = 0; e < epochs; ++e)
    o << "<text x=\"" << x_of(e) << "\" y=\"" << kBottom + 14 << "\" text-anchor=\"middle\">" << e + 1 << "</text>\n";
  o << "<text x=\"" << kRightPanel + kPanel / 2 << "\" y=\"" << kBottom + 30 << "\" text-anchor=\"middle\">epoch</text>\n";
  for (std::size_t i = 0; i < summaries.size(); ++i) {
    const MethodSummary& s = summaries[i];
    o << "<polyline class=\"curve\" fill=\"none\" stroke=\"" << colour(i) << "\" stroke-width=\"1.5\" points=\"";
    for (std::size_t e = 0; e < s.mean_accuracy_by_epoch.size(); ++e)
      o << (e ? " " : "") << x_of(e) << "," << y_of(s.mean_accuracy_by_epoch[e]);
    o << "\"><title>" << escape_xml(s.method) << "</title></polyline>\n";
    for (std::size_t e = 0; e < s.mean_accuracy_by_epoch.size(); ++e)
      o << "<circle cx=\"" << x_of(e) << "\" cy=\"" << y_of(s.mean_accuracy_by_epoch[e]) << "\" r=\"2.5\" fill=\""
        << colour(i) << "\"/>\n";
    const double ly = kTop + 14.0 * static_cast<double>(i) + 40;
    o << "<line x1=\"" << kRightPanel + kPanel + 8 << "\" x2=\"" << kRightPanel + kPanel + 22 << "\" y1=\"" << ly - 4
      << "\" y2=\"" << ly - 4 << "\" stroke=\"" << colour(i) << "\" stroke-width=\"2\"/>"
      << "<text x=\"" << kRightPanel + kPanel + 26 << "\" y=\"" << ly << "\">" << escape_xml(s.method) << "</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace fusedkd::demo
