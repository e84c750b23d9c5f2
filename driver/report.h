// The demo's results: per-method summaries over seeds, as a Markdown table, JSON and an SVG plot.
#pragma once

#include <string>
#include <vector>

#include "distill.h"

namespace fusedkd::demo {

// Mean and sample standard deviation (0 for a single value).
struct MeanStd {
  double mean = 0;
  double std = 0;
};
MeanStd mean_std(const std::vector<double>& values);

struct MethodSummary {
  std::string method;
  std::string description;
  int runs = 0;
  MeanStd accuracy, macro_precision, macro_recall, macro_f1, nll, ece;
  // Paired with plain training ("ce") on the same seeds (same initial weights and batch order):
  // the mean accuracy difference and on how many of the shared seeds this method was more accurate.
  bool has_baseline = false;
  double accuracy_gain = 0;
  int seeds_better = 0, seeds_compared = 0;
  std::vector<double> mean_accuracy_by_epoch;  // test accuracy after each epoch, mean over seeds
  double seconds_per_epoch = 0;                // mean training time of an epoch
};

// One summary per method that has runs, in the order of `methods`.
std::vector<MethodSummary> summarize(const std::vector<RunResult>& runs, const std::vector<Method>& methods);

struct DemoSetup {
  std::string device;
  int threads = 0;
  int train_images = 0, test_images = 0;
  int teacher_epochs = 0, student_epochs = 0, seeds = 0, batch_size = 0;
  long long teacher_parameters = 0, student_parameters = 0;
};

std::string markdown_report(const DemoSetup& setup, const RunResult& teacher,
                            const std::vector<MethodSummary>& summaries);
// JSON of everything: the setup (with the class names that index f1_per_class and confusion),
// the teacher's metrics, the summaries and every run.
std::string json_report(const DemoSetup& setup, const RunResult& teacher, const std::vector<MethodSummary>& summaries,
                        const std::vector<RunResult>& runs);
// Two panels: test accuracy and macro-F1 per method (bars: mean, whiskers: +- one standard
// deviation, axis zoomed to the range of the values, the teacher as a dashed line), and the test
// accuracy after each epoch (mean over seeds) per method.
std::string svg_plot(const RunResult& teacher, const std::vector<MethodSummary>& summaries);

}  // namespace fusedkd::demo
