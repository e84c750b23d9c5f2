#include "splits.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace fusedkd::demo {

namespace {

// For each class, its positions in `labels` in a random order fixed by `seed`.
std::vector<at::Tensor> shuffled_by_class(const at::Tensor& labels, std::uint64_t seed, int classes) {
  if (labels.dim() != 1 || labels.scalar_type() != at::kLong)
    throw std::invalid_argument("fusedkd demo: labels must be a 1-d int64 tensor");
  const at::Tensor y = labels.to(at::kCPU);
  at::Generator generator = at::detail::createCPUGenerator(seed);
  std::vector<at::Tensor> out;
  for (int c = 0; c < classes; ++c) {
    const at::Tensor members = (y == c).nonzero().flatten();
    out.push_back(members.index_select(0, at::randperm(members.size(0), generator, at::kLong)));
  }
  return out;
}

at::Tensor sorted(const std::vector<at::Tensor>& parts) {
  if (parts.empty()) return at::empty({0}, at::kLong);
  return std::get<0>(at::cat(parts).sort());
}

}  // namespace

TrainValidation stratified_split(const at::Tensor& labels, std::int64_t validation_per_class, std::uint64_t seed,
                                 int classes) {
  if (validation_per_class < 0) throw std::invalid_argument("fusedkd demo: the validation size must not be negative");
  std::vector<at::Tensor> train, validation;
  for (const at::Tensor& members : shuffled_by_class(labels, seed, classes)) {
    if (members.size(0) <= validation_per_class)
      throw std::invalid_argument("fusedkd demo: a class has " + std::to_string(members.size(0)) +
                                  " images, too few to hold out " + std::to_string(validation_per_class));
    validation.push_back(members.narrow(0, 0, validation_per_class));
    train.push_back(members.narrow(0, validation_per_class, members.size(0) - validation_per_class));
  }
  return {sorted(train), sorted(validation)};
}

at::Tensor label_budget(const at::Tensor& labels, std::int64_t budget, std::uint64_t seed, int classes) {
  if (budget < 1) throw std::invalid_argument("fusedkd demo: a label budget must be at least 1");
  if (budget >= labels.size(0)) return at::arange(labels.size(0), at::kLong);
  std::vector<at::Tensor> chosen;
  const std::vector<at::Tensor> by_class = shuffled_by_class(labels, seed, classes);
  for (int c = 0; c < classes; ++c) {
    const std::int64_t take = budget / classes + (c < budget % classes ? 1 : 0);
    if (by_class[c].size(0) < take)
      throw std::invalid_argument("fusedkd demo: class " + std::to_string(c) + " has " +
                                  std::to_string(by_class[c].size(0)) + " images, fewer than the " +
                                  std::to_string(take) + " the label budget takes");
    chosen.push_back(by_class[c].narrow(0, 0, take));
  }
  return sorted(chosen);
}

at::Tensor random_shift(const at::Tensor& images, int max_shift, double background, at::Generator& generator) {
  if (max_shift <= 0) return images;
  const std::int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  const at::Tensor padded = at::constant_pad_nd(images, {max_shift, max_shift, max_shift, max_shift}, background);
  const at::Tensor offsets = at::randint(0, 2 * max_shift + 1, {n, 2}, generator, at::kLong);
  const auto o = offsets.accessor<std::int64_t, 2>();
  at::Tensor out = at::empty_like(images);
  for (std::int64_t i = 0; i < n; ++i) out[i].copy_(padded[i].narrow(1, o[i][0], h).narrow(2, o[i][1], w));
  return out;
}

}  // namespace fusedkd::demo
