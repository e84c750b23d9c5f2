// The study's results: a Markdown report, JSON of everything, and an SVG plot (test accuracy
// against the label budget per method, with one-standard-deviation error bars).
#pragma once

#include <string>
#include <vector>

#include "study.h"

namespace fusedkd::demo {

struct StudySetup {
  std::string command;     // how the study was run
  std::string device;
  int threads = 0;
  int train_images = 0, validation_images = 0, test_images = 0;
  std::uint64_t split_seed = 0;
  std::string teacher;     // its architecture and training, one line
  double teacher_validation_accuracy = 0;
  ClassificationMetrics teacher_test;
  StudyOptions options;
};

// Whether an arm meets the study's goal in its cell: more accurate than plain CE on every seed (at
// least two), by more than twice the standard deviation of the paired difference, closing at
// least 30% of the gap to the teacher.
bool meets_goal(const ArmResult& arm);

std::string markdown_report(const StudySetup& setup, const StudyResult& result);
// The setup, the teacher, and per arm its choice, grid, summaries and every seed's run
// (checkpoints, test metrics with per-class F1 and the confusion matrix, indexed by "classes").
std::string json_report(const StudySetup& setup, const StudyResult& result);
// One panel per student: test accuracy (mean over seeds, whiskers +- one standard deviation)
// against the label budget, a line per method and regime, the teacher as a dashed line.
std::string svg_plot(const StudySetup& setup, const StudyResult& result);

}  // namespace fusedkd::demo
