// Float64 references written straight from ../shared/spec/ops.md, random test data with outliers,
// and the error measure every test uses.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace fusedkd::testing {

// softmax(x / T) (or log_softmax) of each row of a rows x cols row-major matrix.
inline std::vector<double> softmax_reference(const std::vector<double>& x, std::int64_t rows,
                                             std::int64_t cols, double temperature, bool log) {
  std::vector<double> out(x.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const double* row = x.data() + r * cols;
    double m = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = 0; j < cols; ++j) m = std::max(m, row[j]);
    double sum = 0;
    for (std::int64_t j = 0; j < cols; ++j) sum += std::exp((row[j] - m) / temperature);
    for (std::int64_t j = 0; j < cols; ++j) {
      const double z = (row[j] - m) / temperature - std::log(sum);
      out[r * cols + j] = log ? z : std::exp(z);
    }
  }
  return out;
}

// d loss / d x from dy and the forward output y (softmax) or z (log-softmax), per the spec:
// softmax:     dx = (1/T) y (dy - sum(dy y));  log-softmax: dx = (1/T) (dy - exp(z) sum(dy)).
inline std::vector<double> softmax_backward_reference(const std::vector<double>& dy,
                                                      const std::vector<double>& out,
                                                      std::int64_t rows, std::int64_t cols,
                                                      double temperature, bool log) {
  std::vector<double> dx(dy.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const double* g = dy.data() + r * cols;
    const double* y = out.data() + r * cols;
    double reduced = 0;
    for (std::int64_t j = 0; j < cols; ++j) reduced += log ? g[j] : g[j] * y[j];
    for (std::int64_t j = 0; j < cols; ++j) {
      dx[r * cols + j] = log ? (g[j] - std::exp(y[j]) * reduced) / temperature
                             : y[j] * (g[j] - reduced) / temperature;
    }
  }
  return dx;
}

// Normal logits with a spread of `scale`, about 1% outliers of +-(20..60) * scale, and, when
// `masked_fraction` > 0, that fraction of -inf entries (never a whole row).
inline std::vector<double> random_logits(std::int64_t rows, std::int64_t cols, std::uint64_t seed,
                                         double scale = 3.0, double masked_fraction = 0.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<double> x(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < cols; ++j) {
      double v = normal(rng);
      const double u = uniform(rng);
      if (u < 0.01) v = (u < 0.005 ? -1 : 1) * scale * (20 + 40 * uniform(rng));
      if (j > 0 && uniform(rng) < masked_fraction) v = -std::numeric_limits<double>::infinity();
      x[r * cols + j] = v;
    }
  }
  return x;
}

// ||out - ref|| / ||ref|| over finite reference entries; any NaN in `out` where `ref` is not NaN,
// or an infinity that differs, makes it infinite (NaN never passes). `floor` > 0 is the smallest
// magnitude the output format resolves (float16's smallest normal): the norm of the reference
// counts as at least floor * sqrt(n), since values below it are stored with few or no digits.
inline double relative_error(const std::vector<double>& out, const std::vector<double>& ref,
                             double floor = 0.0) {
  double diff = 0;
  double norm = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(ref[i])) {
      if (!std::isnan(out[i])) return std::numeric_limits<double>::infinity();
      continue;
    }
    if (std::isnan(out[i])) return std::numeric_limits<double>::infinity();
    if (std::isinf(ref[i])) {
      if (out[i] != ref[i]) return std::numeric_limits<double>::infinity();
      continue;
    }
    diff += (out[i] - ref[i]) * (out[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  norm = std::max(norm, floor * floor * static_cast<double>(ref.size()));
  if (norm == 0) return std::sqrt(diff);
  return std::sqrt(diff / norm);
}

}  // namespace fusedkd::testing
