// Distilling in a LibTorch training loop with the fused loss: a small student MLP learns a
// synthetic 10-class problem from a fixed teacher network with fusedkd::kd_loss (cross-entropy on
// the labels + KL to the teacher's softened outputs) and a FitNets hint through
// fusedkd::projected_feature_mse. Exits non-zero unless the loss decreases.
#include <fusedkd/torch.h>
#include <torch/torch.h>

#include <cstdio>
#include <vector>

namespace {
std::vector<at::Tensor> parameters_of(const std::vector<std::vector<at::Tensor>>& groups) {
  std::vector<at::Tensor> all;
  for (const auto& group : groups) all.insert(all.end(), group.begin(), group.end());
  return all;
}
}  // namespace

int main() {
  torch::manual_seed(0);
  const int64_t inputs = 32, classes = 10, batch = 128;
  const at::Tensor centres = torch::randn({classes, inputs}) * 0.6;
  const at::Tensor labels_all = torch::randint(classes, {4096}, torch::kLong);
  const at::Tensor x_all = centres.index_select(0, labels_all) + torch::randn({4096, inputs});

  // The teacher: a wider network fitted briefly with cross-entropy.
  torch::nn::Sequential teacher_body(torch::nn::Linear(inputs, 128), torch::nn::ReLU());
  torch::nn::Linear teacher_head(128, classes);
  torch::optim::Adam teacher_opt(parameters_of({teacher_body->parameters(), teacher_head->parameters()}),
                                 torch::optim::AdamOptions(1e-3));
  for (int step = 0; step < 200; ++step) {
    const at::Tensor i = torch::randint(4096, {batch}, torch::kLong);
    const at::Tensor loss = torch::cross_entropy_loss(teacher_head(teacher_body->forward(x_all.index_select(0, i))),
                                                      labels_all.index_select(0, i));
    teacher_opt.zero_grad();
    loss.backward();
    teacher_opt.step();
  }

  // The student, a hint regressor [C_t, C_s] from its 16 hidden units to the teacher's 128.
  torch::nn::Sequential student_body(torch::nn::Linear(inputs, 16), torch::nn::ReLU());
  torch::nn::Linear student_head(16, classes);
  const at::Tensor hint_weight = (torch::randn({128, 16}) * 0.25).requires_grad_(true);
  torch::optim::Adam opt(parameters_of({student_body->parameters(), student_head->parameters(), {hint_weight}}),
                         torch::optim::AdamOptions(1e-3));
  double first = 0, last = 0;
  const int steps = 300;
  for (int step = 0; step < steps; ++step) {
    const at::Tensor i = torch::randint(4096, {batch}, torch::kLong);
    const at::Tensor x = x_all.index_select(0, i), y = labels_all.index_select(0, i);
    at::Tensor teacher_features, teacher_logits;
    {
      torch::NoGradGuard no_grad;
      teacher_features = teacher_body->forward(x);
      teacher_logits = teacher_head(teacher_features);
    }
    const at::Tensor student_features = student_body->forward(x);
    const at::Tensor loss =
        fusedkd::kd_loss(student_head(student_features), teacher_logits, y, /*temperature=*/4.0,
                         /*soft_weight=*/0.9, /*hard_weight=*/0.1, "kl", 0.5, -100, /*t2_scale=*/true) +
        0.1 * fusedkd::projected_feature_mse(student_features, hint_weight, std::nullopt, teacher_features);
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step < 20) first += loss.item<double>() / 20;
    if (step >= steps - 20) last += loss.item<double>() / 20;
  }
  std::printf("distillation loss %.4f -> %.4f over %d steps\n", first, last, steps);
  return last < first ? 0 : 1;
}
