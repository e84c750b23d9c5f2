// The demo's teacher and student: small CNNs for 28x28 grey images that also return the feature
// map the feature-matching losses compare (both at 7x7, after their last pooling).
#pragma once

#include <torch/nn.h>

#include <utility>

namespace fusedkd::demo {

// conv 1->32 -> pool -> conv 32->64 -> pool (features [N, 64, 7, 7]) -> fc 3136->128 -> fc 128->10,
// ReLU between, dropout 0.25 before each fully connected layer. 421,642 parameters.
struct TeacherNetImpl : torch::nn::Module {
  TeacherNetImpl();
  // (logits [N, 10], features [N, 64, 7, 7])
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& images);
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(TeacherNet);

// conv 1->8 -> pool -> conv 8->16 -> pool (features [N, 16, 7, 7]) -> fc 784->10, ReLU between.
// 9,098 parameters (2% of the teacher).
struct StudentNetImpl : torch::nn::Module {
  StudentNetImpl();
  // (logits [N, 10], features [N, 16, 7, 7])
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& images);
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(StudentNet);

constexpr int kTeacherFeatureChannels = 64;
constexpr int kStudentFeatureChannels = 16;

// Parameters (elements) of a module.
std::int64_t parameter_count(const torch::nn::Module& module);

}  // namespace fusedkd::demo
