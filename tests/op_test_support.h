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

// Why tests on `device` cannot run here, or nullptr.
inline const char* missing_device(const at::Device& device) {
  if (!device.is_cuda()) return nullptr;
  if (!FUSEDKD_WITH_CUDA) return "skipped: built without CUDA";
  if (!torch::cuda::is_available()) return "skipped: no CUDA device";
  return nullptr;
}

}  // namespace fusedkd::testing
