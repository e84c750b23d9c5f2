// How the study divides its data: a stratified training / validation split of Fashion-MNIST's
// 60,000 training images, the labelled subset a student is given (its label budget), and the
// random shifts the teacher may be trained with.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fusedkd::demo {

// Positions (int64, ascending) into a labelled set.
struct TrainValidation {
  at::Tensor train;
  at::Tensor validation;
};

// Stratified split of `labels` [N] (int64, classes 0..C-1): `validation_per_class` positions of
// every class go to validation, the rest to training; which ones is fixed by `seed` alone. Throws
// std::invalid_argument if a class has fewer than validation_per_class + 1 members.
TrainValidation stratified_split(const at::Tensor& labels, std::int64_t validation_per_class, std::uint64_t seed,
                                 int classes);

// The positions (ascending) of a stratified subset of `labels` with `budget` members: budget / C of
// every class, and one more for each of the first budget % C classes; which ones is fixed by `seed`.
// budget >= labels.size(0) gives every position. Throws std::invalid_argument if a class has too
// few members or budget < 1.
at::Tensor label_budget(const at::Tensor& labels, std::int64_t budget, std::uint64_t seed, int classes);

// `images` [N, 1, H, W] moved by a random whole number of pixels in [-max_shift, max_shift] along
// each axis, independently per image; what moves in is `background`. max_shift = 0 returns images.
at::Tensor random_shift(const at::Tensor& images, int max_shift, double background, at::Generator& generator);

}  // namespace fusedkd::demo
