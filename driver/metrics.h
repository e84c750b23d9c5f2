// Classification metrics of a model's logits on a labelled set.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fusedkd::demo {

struct ClassificationMetrics {
  double accuracy = 0;         // correct / N
  double macro_precision = 0;  // mean over classes of tp / (tp + fp); 0 for a class never predicted
  double macro_recall = 0;     // mean over classes of tp / (tp + fn) (= balanced accuracy)
  double macro_f1 = 0;         // mean over classes of 2 P R / (P + R); 0 where P + R = 0
  double nll = 0;              // mean cross-entropy of the labels under softmax(logits)
  double ece = 0;              // expected calibration error, 15 equal-width confidence bins
  std::vector<double> precision, recall, f1;  // per class
  std::vector<std::int64_t> confusion;        // [true class][predicted class], row-major
};

constexpr int kCalibrationBins = 15;

// Metrics of `logits` [N, C] (any floating dtype, any device) against `labels` [N] (int64,
// values in [0, C)). N = 0 gives all zeros. Precision, recall and F1 follow scikit-learn's macro
// averages with zero_division=0; ECE = sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)| over bins
// of the top softmax probability, (b/15, (b+1)/15].
ClassificationMetrics classification_metrics(const at::Tensor& logits, const at::Tensor& labels);

}  // namespace fusedkd::demo
