// Every op on the CPU gives the same bits whatever the intra-op thread count (1 to 4), and when
// called from several threads at once (4 threads x many calls of mixed shapes, against the
// results of the same calls made one after another): the row partition, the deterministic
// reductions and the per-device plan caches hold under both. On CUDA (scripts/gpu_check.sh): the
// same bits run after run, and from two host threads on two streams at once.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common.h"  // torch_ext/: torch_cpu_executor
#include "fusedkd/build_config.h"
#include "fusedkd/torch.h"

#if FUSEDKD_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

// One op call: its inputs are made from `seed`, it returns the loss and every input's gradient
// (grad_output 1), all detached.
struct Call {
  std::string name;
  std::function<std::vector<at::Tensor>(int seed)> run;
};

// A leaf on `device` made from `seed` on the CPU (the same values on every device).
at::Tensor leaf(at::IntArrayRef shape, int seed, at::Device device, at::ScalarType type = at::kFloat,
                double scale = 3.0) {
  const at::Generator g = at::detail::createCPUGenerator(static_cast<std::uint64_t>(seed));
  return (at::randn(shape, g, at::TensorOptions().dtype(at::kDouble)) * scale).to(device, type).requires_grad_(true);
}

std::vector<at::Tensor> value_and_grads(const at::Tensor& out, const std::vector<at::Tensor>& inputs) {
  const at::Tensor loss = out.dim() == 0 ? out : (out.to(at::kDouble) * out.to(at::kDouble)).sum();
  std::vector<at::Tensor> result = {out.detach()};
  for (const at::Tensor& g : torch::autograd::grad({loss}, inputs)) result.push_back(g.detach());
  return result;
}

// The ops on shapes large enough to be split over threads (several tasks per op), with seeds
// varying the shapes a little so that concurrent calls differ.
std::vector<Call> calls(at::Device d = at::kCPU) {
  const auto rows = [](int seed) { return 300 + 7 * (seed % 5); };
  return {
      {"softmax_t",
       [=](int seed) {
         const at::Tensor x = leaf({rows(seed), 1000}, seed, d);
         return value_and_grads(fusedkd::softmax_t(x, 2.0), {x});
       }},
      {"log_softmax_t bf16",
       [=](int seed) {
         const at::Tensor x = leaf({rows(seed), 777}, seed, d, at::kBFloat16);
         return value_and_grads(fusedkd::log_softmax_t(x, 0.7), {x});
       }},
      {"kd_loss kl with labels",
       [=](int seed) {
         const at::Tensor s = leaf({rows(seed), 1000}, seed, d), t = leaf({rows(seed), 1000}, seed + 1, d);
         const at::Tensor y = at::arange(rows(seed), at::TensorOptions(at::kLong).device(d)).remainder(1000);
         return value_and_grads(fusedkd::kd_loss(s, t, y, 2.0, 0.7, 0.3, "kl"), {s, t});
       }},
      {"kl_div reverse none",
       [=](int seed) {
         const at::Tensor s = leaf({rows(seed), 12}, seed, d), t = leaf({rows(seed), 12}, seed + 1, d);
         return value_and_grads(fusedkd::kl_div(s, t, 1.5, "none", true), {s, t});
       }},
      {"jsd",
       [=](int seed) {
         const at::Tensor s = leaf({rows(seed), 3000}, seed, d), t = leaf({rows(seed), 3000}, seed + 1, d);
         return value_and_grads(fusedkd::jsd(s, t, 1.0, 0.3), {s, t});
       }},
      {"soft_mse",
       [=](int seed) {
         const at::Tensor s = leaf({rows(seed), 10}, seed, d), t = leaf({rows(seed), 10}, seed + 1, d);
         return value_and_grads(fusedkd::soft_mse(s, t, 4.0), {s, t});
       }},
      {"feature_mse",
       [=](int seed) {
         const at::Tensor s = leaf({64, 32, 14, 14}, seed, d, at::kFloat, 1.0);
         const at::Tensor t = leaf({64, 32, 14, 14}, seed + 1, d, at::kFloat, 1.0);
         return value_and_grads(fusedkd::feature_mse(s, t), {s, t});
       }},
      {"attention_transfer",
       [=](int seed) {
         const at::Tensor s = leaf({64, 16, 14, 14}, seed, d, at::kFloat, 1.0);
         const at::Tensor t = leaf({64, 48, 14, 14}, seed + 1, d, at::kFloat, 1.0);
         return value_and_grads(fusedkd::attention_transfer(s, t, 2.0), {s, t});
       }},
      {"projected_feature_mse",
       [=](int seed) {
         const at::Tensor s = leaf({32, 16, 7, 7}, seed, d, at::kFloat, 1.0);
         const at::Tensor w = leaf({64, 16}, seed + 1, d, at::kFloat, 0.2);
         const at::Tensor b = leaf({64}, seed + 2, d, at::kFloat, 1.0);
         const at::Tensor t = leaf({32, 64, 7, 7}, seed + 3, d, at::kFloat, 1.0);
         return value_and_grads(fusedkd::projected_feature_mse(s, w, b, t), {s, w, b});
       }},
      {"similarity_preserving",
       [=](int seed) {
         // 5184 and 10368 columns: the Gram matrices' SYRKs in 2 and 3 chunks on the CPU
         const at::Tensor s = leaf({96, 16, 18, 18}, seed, d, at::kFloat, 1.0);
         const at::Tensor t = leaf({96, 32, 18, 18}, seed + 1, d, at::kFloat, 1.0);
         return value_and_grads(fusedkd::similarity_preserving(s, t), {s, t});
       }},
  };
}

bool same_bits(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!torch::equal(a[i], b[i])) return false;
  return true;
}

// `threads` threads, each making `calls_per_thread` calls after running `setup` (its stream, say):
// call k of thread i is op (i + k) % ops with seed (i * 31 + k) % 5 (the shapes vary with the
// seed); every result must have the bits of the same call made alone, before, in turn.
void expect_concurrent_calls_give_sequential_bits(const std::vector<Call>& ops, int threads, int calls_per_thread,
                                                  const std::function<void()>& setup) {
  const auto op_of = [&](int i, int k) { return static_cast<std::size_t>((i + k) % static_cast<int>(ops.size())); };
  const auto seed_of = [](int i, int k) { return (i * 31 + k) % 5; };
  std::vector<std::vector<std::vector<at::Tensor>>> expected(ops.size(), std::vector<std::vector<at::Tensor>>(5));
  for (std::size_t o = 0; o < ops.size(); ++o)
    for (int seed = 0; seed < 5; ++seed) expected[o][seed] = ops[o].run(seed);
  // Written on this thread's stream; the workers may read them on streams that do not wait for it.
  if (torch::cuda::is_available()) torch::cuda::synchronize();
  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i)
    pool.emplace_back([&, i] {
      setup();
      for (int k = 0; k < calls_per_thread; ++k) {
        try {
          if (!same_bits(ops[op_of(i, k)].run(seed_of(i, k)), expected[op_of(i, k)][seed_of(i, k)])) ++mismatches;
        } catch (...) {
          ++failures;
        }
      }
    });
  for (std::thread& t : pool) t.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(failures.load(), 0);
}

class ThreadCount {  // restores LibTorch's intra-op thread count
 public:
  ThreadCount() : saved_(at::get_num_threads()) {}
  ~ThreadCount() { at::set_num_threads(saved_); }

 private:
  int saved_;
};

// The CPU kernels run on LibTorch's intra-op threads: with 2 of them a split job runs on 2 threads
// (at::parallel_for is a header template, serial where the op library is built without OpenMP).
TEST(Parallelism, TheOpsCpuExecutorUsesTheIntraOpThreads) {
  const ThreadCount restore;
  at::set_num_threads(2);
  std::mutex mutex;
  std::set<std::thread::id> seen;
  fusedkd::torch_ext::torch_cpu_executor().run(64, 1, [&](std::int64_t, std::int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // long enough for the other thread to start
    const std::lock_guard<std::mutex> lock(mutex);
    seen.insert(std::this_thread::get_id());
  });
  EXPECT_EQ(seen.size(), 2u);
}

TEST(Determinism, SameBitsForOneToFourIntraOpThreads) {
  const ThreadCount restore;
  for (const Call& call : calls()) {
    at::set_num_threads(1);
    const std::vector<at::Tensor> reference = call.run(11);
    for (const int threads : {2, 3, 4}) {
      at::set_num_threads(threads);
      EXPECT_TRUE(same_bits(call.run(11), reference)) << call.name << " with " << threads << " threads";
    }
  }
}

TEST(Concurrency, CallsFromFourThreadsGiveTheSequentialBits) {
  const ThreadCount restore;
  at::set_num_threads(2);
  const std::vector<Call> ops = calls();
  constexpr int kThreads = 4, kCallsPerThread = 60;  // 240 calls, every op and 5 shapes each
  expect_concurrent_calls_give_sequential_bits(ops, kThreads, kCallsPerThread, [] {});
}

#if FUSEDKD_WITH_CUDA
TEST(Determinism, CudaSameBitsRunAfterRun) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const Call& call : calls(at::kCUDA)) {
    const std::vector<at::Tensor> reference = call.run(11);
    for (int k = 0; k < 3; ++k) EXPECT_TRUE(same_bits(call.run(11), reference)) << call.name << ", run " << k + 2;
  }
}

TEST(Concurrency, CudaTwoStreamsGiveTheSequentialBits) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Call> ops = calls(at::kCUDA);
  constexpr int kThreads = 2, kCallsPerThread = 40;
  // Each thread's work (inputs, the op, its backward, the comparison) on a stream of its own; the
  // expected results come from the default stream, one call after another.
  expect_concurrent_calls_give_sequential_bits(ops, kThreads, kCallsPerThread,
                                               [] { c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool()); });
}
#endif

}  // namespace
