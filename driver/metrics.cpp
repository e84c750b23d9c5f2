#include "metrics.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace fusedkd::demo {

ClassificationMetrics classification_metrics(const at::Tensor& logits, const at::Tensor& labels) {
  if (logits.dim() != 2 || labels.dim() != 1 || labels.size(0) != logits.size(0))
    throw std::invalid_argument("classification_metrics: logits must be [N, C] and labels [N]");
  const std::int64_t n = logits.size(0), classes = logits.size(1);
  if (classes < 1) throw std::invalid_argument("classification_metrics: logits need at least one class");
  ClassificationMetrics m;
  m.precision.assign(classes, 0.0);
  m.recall.assign(classes, 0.0);
  m.f1.assign(classes, 0.0);
  m.confusion.assign(classes * classes, 0);
  if (n == 0) return m;

  const at::Tensor log_p = at::log_softmax(logits.detach().to(at::kCPU, at::kDouble), 1);
  const at::Tensor y = labels.to(at::kCPU, at::kLong).contiguous();
  const auto [top_log_p, predicted] = log_p.max(1);
  const at::Tensor pred = predicted.contiguous();
  const at::Tensor confidence = top_log_p.exp().contiguous();
  const auto log_p_a = log_p.accessor<double, 2>();
  const std::int64_t* y_p = y.data_ptr<std::int64_t>();
  const std::int64_t* pred_p = pred.data_ptr<std::int64_t>();
  const double* conf_p = confidence.data_ptr<double>();

  double nll = 0;
  std::vector<double> bin_confidence(kCalibrationBins, 0.0), bin_correct(kCalibrationBins, 0.0);
  std::vector<std::int64_t> bin_count(kCalibrationBins, 0);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t t = y_p[i];
    if (t < 0 || t >= classes)
      throw std::invalid_argument("classification_metrics: label " + std::to_string(t) + " outside [0, " +
                                  std::to_string(classes) + ")");
    ++m.confusion[t * classes + pred_p[i]];
    nll -= log_p_a[i][t];
    // Bin b holds confidences in (b/B, (b+1)/B]; a confidence is at least 1/C > 0.
    int b = static_cast<int>(std::ceil(conf_p[i] * kCalibrationBins)) - 1;
    b = b < 0 ? 0 : (b >= kCalibrationBins ? kCalibrationBins - 1 : b);
    ++bin_count[b];
    bin_confidence[b] += conf_p[i];
    bin_correct[b] += pred_p[i] == t ? 1.0 : 0.0;
  }
  m.nll = nll / static_cast<double>(n);
  for (int b = 0; b < kCalibrationBins; ++b)
    m.ece += std::fabs(bin_correct[b] - bin_confidence[b]) / static_cast<double>(n);

  std::int64_t correct = 0;
  for (std::int64_t c = 0; c < classes; ++c) {
    std::int64_t predicted_c = 0, actual_c = 0;
    for (std::int64_t k = 0; k < classes; ++k) {
      predicted_c += m.confusion[k * classes + c];
      actual_c += m.confusion[c * classes + k];
    }
    const std::int64_t tp = m.confusion[c * classes + c];
    correct += tp;
    m.precision[c] = predicted_c ? static_cast<double>(tp) / static_cast<double>(predicted_c) : 0.0;
    m.recall[c] = actual_c ? static_cast<double>(tp) / static_cast<double>(actual_c) : 0.0;
    const double pr = m.precision[c] + m.recall[c];
    m.f1[c] = pr > 0 ? 2 * m.precision[c] * m.recall[c] / pr : 0.0;
    m.macro_precision += m.precision[c] / static_cast<double>(classes);
    m.macro_recall += m.recall[c] / static_cast<double>(classes);
    m.macro_f1 += m.f1[c] / static_cast<double>(classes);
  }
  m.accuracy = static_cast<double>(correct) / static_cast<double>(n);
  return m;
}

}  // namespace fusedkd::demo
