// Helpers of the Fashion-MNIST demo's tests (test_driver_*.cpp): whether the real dataset is
// there, a check of an exception's message, and a tiny study's data on real images.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <exception>
#include <filesystem>
#include <string>

#include "distill.h"
#include "fashion_mnist.h"

namespace fusedkd::testing {

// The Fashion-MNIST files where the demo looks for them (Debian's package, or the environment's).
inline bool have_real_data() {
  const std::string dir = demo::fashion_mnist_dir();
  return std::filesystem::exists(dir + "/train-images-idx3-ubyte.gz") ||
         std::filesystem::exists(dir + "/train-images-idx3-ubyte");
}

template <typename Fn>
void expect_error_containing(Fn&& fn, const std::string& text) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one mentioning '" << text << "'";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

// A tiny study on real images: teacher logits stand in for a trained teacher's (the labels, made
// noisy), students are MLPs trained for a few steps.
inline demo::StudyData tiny_study_data() {
  demo::FashionMnist real = demo::load_fashion_mnist(demo::fashion_mnist_dir());
  demo::StudyData d;
  d.train = {real.train.images.narrow(0, 0, 2000), real.train.labels.narrow(0, 0, 2000)};
  d.validation = {real.train.images.narrow(0, 2000, 500), real.train.labels.narrow(0, 2000, 500)};
  d.test = {real.test.images.narrow(0, 0, 500), real.test.labels.narrow(0, 0, 500)};
  torch::manual_seed(9);
  namespace F = torch::nn::functional;
  d.teacher_logits = 4.0 * F::one_hot(d.train.labels, 10).to(torch::kFloat) + torch::randn({2000, 10});
  return d;
}

}  // namespace fusedkd::testing
