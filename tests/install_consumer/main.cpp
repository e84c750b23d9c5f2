// Uses the installed headers and libraries: the C++ op API with autograd, and a kernel launcher.
#include <fusedkd/softmax.h>
#include <fusedkd/torch.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({4, 10}, torch::kDouble).requires_grad_(true);
  const at::Tensor w = torch::randn({4, 10}, torch::kDouble);
  const at::Tensor y = fusedkd::softmax_t(x, 2.0);
  (y * w).sum().backward();
  const at::Tensor x_ref = x.detach().clone().requires_grad_(true);
  const at::Tensor y_ref = torch::softmax(x_ref / 2.0, -1);
  (y_ref * w).sum().backward();
  const double value_error = (y - y_ref).abs().max().item<double>();
  const double grad_error = (x.grad() - x_ref.grad()).abs().max().item<double>();

  std::vector<float> in = {1.f, 2.f, 3.f}, out(3, 0.f);
  fusedkd::SoftmaxForwardArgs args;
  args.input = in.data();
  args.output = out.data();
  args.rows = 1;
  args.cols = 3;
  args.input_row_stride = 3;
  args.kind = fusedkd::SoftmaxKind::LogSoftmax;
  fusedkd::softmax_forward_cpu(args);
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  const double kernel_error = std::abs(out[2] - (3.0 - lse));

  std::printf("install consumer: value error %.3g, gradient error %.3g, kernel error %.3g\n",
              value_error, grad_error, kernel_error);
  return value_error < 1e-12 && grad_error < 1e-12 && kernel_error < 1e-6 ? 0 : 1;
}
