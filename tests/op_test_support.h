// Helpers of the LibTorch op tests.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <initializer_list>
#include <string>

#include "fusedkd/build_config.h"

namespace fusedkd::testing {

// Runs `fn`, expects a c10::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<const char*> parts) {
  try {
    fn();
    ADD_FAILURE() << "no error raised; expected one mentioning " << *parts.begin();
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    for (const char* part : parts) EXPECT_NE(message.find(part), std::string::npos) << message;
  }
}

// ||out - ref|| / ||ref|| in float64 on the CPU (the plain difference when ref is 0); a NaN on one
// side only is an infinite error.
inline double relative_error(const at::Tensor& out, const at::Tensor& ref) {
  const at::Tensor o = out.detach().to(at::kDouble).cpu();
  const at::Tensor r = ref.detach().to(at::kDouble).cpu();
  if (o.isnan().any().item<bool>() != r.isnan().any().item<bool>()) return 1e300;
  const double norm = r.norm().item<double>();
  const double diff = (o - r).norm().item<double>();
  return norm == 0 ? diff : diff / norm;
}

// Why tests on `device` cannot run here, or nullptr.
inline const char* missing_device(const at::Device& device) {
  if (!device.is_cuda()) return nullptr;
  if (!FUSEDKD_WITH_CUDA) return "skipped: built without CUDA";
  if (!torch::cuda::is_available()) return "skipped: no CUDA device";
  return nullptr;
}

}  // namespace fusedkd::testing
