// The schemas of every fusedkd op (one TORCH_LIBRARY block per namespace is allowed).
// Behaviour: ../shared/spec/ops.md, docs/architecture.md.
#include <torch/library.h>

TORCH_LIBRARY(fusedkd, m) {
  m.def("softmax_t(Tensor logits, float temperature=1.0) -> Tensor");
  m.def("log_softmax_t(Tensor logits, float temperature=1.0) -> Tensor");
  m.def("softmax_t_backward(Tensor grad_output, Tensor output, float temperature) -> Tensor");
  m.def("log_softmax_t_backward(Tensor grad_output, Tensor output, float temperature) -> Tensor");
}
