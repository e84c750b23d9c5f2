#include "models.h"

#include <torch/nn/functional.h>

namespace fusedkd::demo {

namespace F = torch::nn::functional;

TeacherNetImpl::TeacherNetImpl() {
  conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 3).padding(1)));
  conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, kTeacherFeatureChannels, 3).padding(1)));
  fc1 = register_module("fc1", torch::nn::Linear(kTeacherFeatureChannels * 7 * 7, 128));
  fc2 = register_module("fc2", torch::nn::Linear(128, 10));
  dropout = register_module("dropout", torch::nn::Dropout(0.25));
}

std::pair<torch::Tensor, torch::Tensor> TeacherNetImpl::forward(const torch::Tensor& images) {
  torch::Tensor x = F::max_pool2d(torch::relu(conv1(images)), F::MaxPool2dFuncOptions(2));
  const torch::Tensor features = F::max_pool2d(torch::relu(conv2(x)), F::MaxPool2dFuncOptions(2));
  x = torch::relu(fc1(dropout(features.flatten(1))));
  return {fc2(dropout(x)), features};
}

StudentNetImpl::StudentNetImpl() {
  conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 8, 3).padding(1)));
  conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, kStudentFeatureChannels, 3).padding(1)));
  fc = register_module("fc", torch::nn::Linear(kStudentFeatureChannels * 7 * 7, 10));
}

std::pair<torch::Tensor, torch::Tensor> StudentNetImpl::forward(const torch::Tensor& images) {
  const torch::Tensor x = F::max_pool2d(torch::relu(conv1(images)), F::MaxPool2dFuncOptions(2));
  const torch::Tensor features = F::max_pool2d(torch::relu(conv2(x)), F::MaxPool2dFuncOptions(2));
  return {fc(features.flatten(1)), features};
}

std::int64_t parameter_count(const torch::nn::Module& module) {
  std::int64_t count = 0;
  for (const torch::Tensor& p : module.parameters()) count += p.numel();
  return count;
}

}  // namespace fusedkd::demo
