#include "models.h"

#include <torch/nn/functional.h>

#include <stdexcept>

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

CnnStudent::CnnStudent() {
  conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 8, 3).padding(1)));
  conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, kStudentFeatureChannels, 3).padding(1)));
  fc = register_module("fc", torch::nn::Linear(kStudentFeatureChannels * 7 * 7, 10));
}

std::pair<torch::Tensor, torch::Tensor> CnnStudent::forward(const torch::Tensor& images) {
  const torch::Tensor x = F::max_pool2d(torch::relu(conv1(images)), F::MaxPool2dFuncOptions(2));
  const torch::Tensor features = F::max_pool2d(torch::relu(conv2(x)), F::MaxPool2dFuncOptions(2));
  return {fc(features.flatten(1)), features};
}

MlpStudent::MlpStudent() {
  fc1 = register_module("fc1", torch::nn::Linear(28 * 28, kMlpHidden));
  fc2 = register_module("fc2", torch::nn::Linear(kMlpHidden, kMlpHidden));
  fc3 = register_module("fc3", torch::nn::Linear(kMlpHidden, 10));
}

std::pair<torch::Tensor, torch::Tensor> MlpStudent::forward(const torch::Tensor& images) {
  const torch::Tensor x = torch::relu(fc2(torch::relu(fc1(images.flatten(1)))));
  return {fc3(x), torch::Tensor()};
}

std::string student_name(StudentKind kind) { return kind == StudentKind::Cnn ? "cnn" : "mlp"; }

StudentKind parse_student(const std::string& name) {
  if (name == "cnn") return StudentKind::Cnn;
  if (name == "mlp") return StudentKind::Mlp;
  throw std::invalid_argument("fusedkd demo: unknown student '" + name + "' (cnn or mlp)");
}

std::shared_ptr<StudentNet> make_student(StudentKind kind) {
  if (kind == StudentKind::Cnn) return std::make_shared<CnnStudent>();
  return std::make_shared<MlpStudent>();
}

std::string describe_student(StudentKind kind) {
  const std::string count = std::to_string(parameter_count(*make_student(kind)));
  if (kind == StudentKind::Cnn)
    return "CNN: conv 3x3 1->8, max-pool, conv 3x3 8->16, max-pool, fc 784->10 (" + count + " parameters)";
  const std::string h = std::to_string(kMlpHidden);
  return "MLP: fc 784->" + h + "->" + h + "->10, ReLU, no dropout (" + count + " parameters)";
}

std::int64_t parameter_count(const torch::nn::Module& module) {
  std::int64_t count = 0;
  for (const torch::Tensor& p : module.parameters()) count += p.numel();
  return count;
}

}  // namespace fusedkd::demo
