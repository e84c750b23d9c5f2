// The demo's networks for 28x28 grey images: a CNN teacher, and two kinds of student (a small CNN
// and a Hinton-style MLP). Each returns its logits and the feature map the feature-matching
// losses compare (the CNNs' 7x7 maps after their last pooling; the MLP has none).
#pragma once

#include <torch/nn.h>

#include <memory>
#include <string>
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

// A student network: (logits [N, 10], features) with features undefined where the network has no
// feature map to match.
struct StudentNet : torch::nn::Module {
  virtual std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& images) = 0;
};

// conv 1->8 -> pool -> conv 8->16 -> pool (features [N, 16, 7, 7]) -> fc 784->10, ReLU between.
// 9,098 parameters (2% of the teacher).
struct CnnStudent : StudentNet {
  CnnStudent();
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& images) override;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear fc{nullptr};
};

// Hinton et al. (2015)'s MNIST student, narrower: fc 784->kMlpHidden -> fc kMlpHidden->kMlpHidden
// -> fc ->10, ReLU between, no dropout, no feature map.
constexpr int kMlpHidden = 400;
struct MlpStudent : StudentNet {
  MlpStudent();
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& images) override;
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};

enum class StudentKind { Cnn, Mlp };
// "cnn" / "mlp", and back (std::invalid_argument for another name).
std::string student_name(StudentKind kind);
StudentKind parse_student(const std::string& name);
// A fresh student of `kind`, initialised from LibTorch's default generator.
std::shared_ptr<StudentNet> make_student(StudentKind kind);
// One line: the layers and the parameter count.
std::string describe_student(StudentKind kind);

constexpr int kTeacherFeatureChannels = 64;
constexpr int kStudentFeatureChannels = 16;

// Parameters (elements) of a module.
std::int64_t parameter_count(const torch::nn::Module& module);

}  // namespace fusedkd::demo
