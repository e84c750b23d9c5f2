// Helpers of the kernel-library tests (no LibTorch): host buffers of any kernel dtype,
// tolerances, and running a launcher on the CPU or on a CUDA device with the same buffers.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "fusedkd/build_config.h"
#include "fusedkd/dtype.h"

#if FUSEDKD_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace fusedkd::testing {

// Host storage of values converted to one of the kernel dtypes.
struct Buffer {
  DType dtype;
  std::vector<unsigned char> bytes;

  Buffer(DType type, std::size_t count) : dtype(type), bytes(count * dtype_size(type)) {}
  static Buffer from(DType type, const std::vector<double>& values) {
    Buffer b(type, values.size());
    for (std::size_t i = 0; i < values.size(); ++i) b.set(i, values[i]);
    return b;
  }
  std::size_t size() const { return bytes.size() / dtype_size(dtype); }
  void set(std::size_t i, double v) {
    void* p = bytes.data() + i * dtype_size(dtype);
    switch (dtype) {
      case DType::Float32: { const float f = static_cast<float>(v); std::memcpy(p, &f, 4); break; }
      case DType::Float64: std::memcpy(p, &v, 8); break;
      case DType::Float16: { const Half h = float_to_half(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
      case DType::BFloat16: { const BFloat16 h = float_to_bfloat16(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
    }
  }
  double get(std::size_t i) const {
    const void* p = bytes.data() + i * dtype_size(dtype);
    switch (dtype) {
      case DType::Float32: { float f; std::memcpy(&f, p, 4); return f; }
      case DType::Float64: { double d; std::memcpy(&d, p, 8); return d; }
      case DType::Float16: { Half h; std::memcpy(&h, p, 2); return half_to_float(h); }
      case DType::BFloat16: { BFloat16 h; std::memcpy(&h, p, 2); return bfloat16_to_float(h); }
    }
    return 0;
  }
  std::vector<double> values() const {
    std::vector<double> v(size());
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = get(i);
    return v;
  }
  void poison() {  // NaN in every float format
    if (!bytes.empty()) std::memset(bytes.data(), 0xFF, bytes.size());  // (memset of a null pointer is UB)
  }
  void* data() { return bytes.data(); }
};

// n normal values (mean 0, standard deviation `scale`) from a fixed seed.
inline std::vector<double> random_values(std::size_t n, unsigned seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = normal(rng);
  return v;
}

// ||out - ref|| / ||ref|| (||out - ref|| when ref is 0); infinite where one is NaN and the other not.
inline double rel_diff(const std::vector<double>& out, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(out[i]) != std::isnan(ref[i])) return INFINITY;
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

inline double tolerance(DType dtype) {
  switch (dtype) {
    case DType::Float64: return 1e-12;
    case DType::Float32: return 5e-6;
    default: return 1e-2;
  }
}

// float16 stores magnitudes below its smallest normal, 2^-14, with few digits (tiny gradients of
// long rows at high temperature): errors are measured against at least that scale.
inline double resolution_floor(DType dtype) { return dtype == DType::Float16 ? std::ldexp(1.0, -14) : 0.0; }

enum class Backend { Cpu, Cuda };

inline const char* backend_name(Backend backend) { return backend == Backend::Cpu ? "Cpu" : "Cuda"; }

// GoogleTest prints a Backend parameter by name (not as a byte dump).
inline void PrintTo(Backend backend, std::ostream* os) { *os << backend_name(backend); }

// Test names of a suite instantiated over ::testing::Values(Backend::Cpu, Backend::Cuda).
inline std::string backend_test_name(const ::testing::TestParamInfo<Backend>& info) {
  return backend_name(info.param);
}

// Why a backend cannot run here, or nullptr.
inline const char* missing_device(Backend backend) {
  if (backend != Backend::Cuda) return nullptr;
#if FUSEDKD_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) return "skipped: no CUDA device";
  return nullptr;
#else
  return "skipped: built without CUDA";
#endif
}

// A test run once per backend (CPU, CUDA); skipped where the backend cannot run.
class BackendTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (const char* why = missing_device(GetParam())) GTEST_SKIP() << why;
  }
};

using LaunchBody = std::function<void(const std::vector<const void*>& inputs, const std::vector<void*>& outputs,
                                      void* workspace, void* stream)>;

// Runs `body` with pointers to the buffers: host memory on the CPU; on CUDA, device copies of
// every buffer (outputs copied back afterwards, the workspace in device memory, stream 0).
inline void run_on_backend(Backend backend, const std::vector<const Buffer*>& inputs,
                           const std::vector<Buffer*>& outputs, std::size_t workspace_bytes, const LaunchBody& body) {
  if (backend == Backend::Cpu) {
    std::vector<const void*> in;
    std::vector<void*> out;
    for (const Buffer* b : inputs) in.push_back(b->bytes.data());
    for (Buffer* b : outputs) out.push_back(b->data());
    std::vector<unsigned char> workspace(workspace_bytes);
    body(in, out, workspace.data(), nullptr);
    return;
  }
#if FUSEDKD_WITH_CUDA
  auto upload = [](const Buffer& b) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, b.bytes.size() ? b.bytes.size() : 1), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, b.bytes.data(), b.bytes.size(), cudaMemcpyHostToDevice), cudaSuccess);
    return p;
  };
  std::vector<void*> device_in, device_out;
  for (const Buffer* b : inputs) device_in.push_back(upload(*b));
  for (Buffer* b : outputs) device_out.push_back(upload(*b));
  void* workspace = nullptr;
  EXPECT_EQ(cudaMalloc(&workspace, workspace_bytes ? workspace_bytes : 1), cudaSuccess);
  body(std::vector<const void*>(device_in.begin(), device_in.end()), device_out, workspace, nullptr);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    EXPECT_EQ(cudaMemcpy(outputs[i]->data(), device_out[i], outputs[i]->bytes.size(), cudaMemcpyDeviceToHost),
              cudaSuccess);
  }
  for (void* p : device_in) cudaFree(p);
  for (void* p : device_out) cudaFree(p);
  cudaFree(workspace);
#endif
}

// Host buffers for a launcher call that asks for float32 gradients of float16 inputs
// (float16_gradients_in_float32: the CPU launchers' option, which the CUDA ones reject before
// they touch the device): 8 float16 inputs, their float32 gradient, a loss and a workspace.
struct Float16GradientRequest {
  std::vector<std::uint16_t> x = std::vector<std::uint16_t>(8, 0);
  std::vector<float> grad = std::vector<float>(8, 0.f), loss = std::vector<float>(1, 0.f);
  std::vector<unsigned char> workspace = std::vector<unsigned char>(1024);
  // Points args' outputs at these buffers and sets the option.
  template <typename Args>
  Args& ask(Args& args) {
    args.loss = loss.data();
    args.grad_student = grad.data();
    args.workspace = workspace.data();
    args.float16_gradients_in_float32 = true;
    return args;
  }
};

}  // namespace fusedkd::testing

// Inside a run_on_backend body: `cpu_call` on the CPU backend, else `cuda_call`, which is compiled
// only where CUDA is (the CUDA launchers do not exist in a CPU-only build). `stream` is the body's
// stream argument (`void*`); `cuda_call` may use FUSEDKD_TEST_STREAM(stream) for the typed one.
#if FUSEDKD_WITH_CUDA
#define FUSEDKD_ON_BACKEND(backend, stream, cpu_call, cuda_call) \
  do {                                                            \
    if ((backend) == ::fusedkd::testing::Backend::Cpu) {          \
      cpu_call;                                                   \
    } else {                                                      \
      cuda_call;                                                  \
    }                                                             \
    (void)(stream);                                               \
  } while (0)
#else
#define FUSEDKD_ON_BACKEND(backend, stream, cpu_call, cuda_call) \
  do {                                                            \
    if ((backend) == ::fusedkd::testing::Backend::Cpu) {          \
      cpu_call;                                                   \
    }                                                             \
    (void)(stream);                                               \
  } while (0)
#endif
#define FUSEDKD_TEST_STREAM(stream) static_cast<CUstream_st*>(stream)

