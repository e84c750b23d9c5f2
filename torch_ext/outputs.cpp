#include "outputs.h"

#include "fusedkd/torch.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <pthread.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <unordered_map>

namespace fusedkd::torch_ext {
namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

// The cache's capacity in bytes: FUSEDKD_CPU_OUTPUT_CACHE_MB (MiB; 0 turns the cache off), read
// once, by default kDefaultCacheMiB.
constexpr std::size_t kDefaultCacheMiB = 1024;
std::size_t cache_capacity() {
  static const std::size_t bytes = [] {
    const char* value = std::getenv("FUSEDKD_CPU_OUTPUT_CACHE_MB");
    if (value == nullptr || *value == '\0') return kDefaultCacheMiB << 20;
    const std::size_t digits = std::strspn(value, "0123456789");
    TORCH_CHECK(value[digits] == '\0' && digits <= 12, "fusedkd: FUSEDKD_CPU_OUTPUT_CACHE_MB must be a whole "
                "number of MiB (at most 12 digits), not \"", value, "\"");
    return static_cast<std::size_t>(std::strtoull(value, nullptr, 10)) << 20;
  }();
  return bytes;
}

// The large outputs' blocks: those in use (with their sizes) and the freed ones kept for the next
// output of the same size. A training loop frees a step's gradient buffer before the next step
// asks for one just as large; handing it the same block again saves the faults and the zeroing
// of fresh pages that every mmap'd block costs, even on huge pages (docs/architecture.md). Blocks
// are matched by their size rounded up to whole huge pages; the oldest go first when the kept
// ones would exceed the capacity.
class OutputCache {
 public:
  // A kept block of exactly `bytes` (rounded), now in use, or null.
  void* take(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->bytes != bytes) continue;
      void* data = it->data;
      in_use_.emplace(data, bytes);  // first: if it throws, nothing has changed
      idle_bytes_ -= bytes;
      idle_.erase(it);
      return data;
    }
    return nullptr;
  }
  // A new block in use; throws only std::bad_alloc, with nothing changed.
  void track(void* data, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    in_use_.emplace(data, bytes);
  }
  // A freed block (the tensors' deleter): kept, or freed. Never throws; a block it does not know
  // (one from before a fork, see output_cache) is freed. Blocks are freed (munmap, which takes
  // milliseconds for a large one) after the lock is released, so that no other thread's take or
  // give waits on it.
  void give(void* data) noexcept {
    std::list<Block> evicted;
    bool kept = false;
    try {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = in_use_.find(data);
      if (it != in_use_.end()) {
        const std::size_t bytes = it->second;
        in_use_.erase(it);
        if (bytes <= cache_capacity()) {
          idle_.push_back({data, bytes});  // first: if it throws, the block is freed below
          kept = true;
          idle_bytes_ += bytes;
          while (idle_bytes_ > cache_capacity()) {  // the oldest first
            idle_bytes_ -= idle_.front().bytes;
            evicted.splice(evicted.end(), idle_, idle_.begin());  // no allocation: cannot throw
          }
        }
      }
    } catch (...) {
    }
    for (const Block& b : evicted) std::free(b.data);
    if (!kept) std::free(data);
  }
  std::size_t release() {
    std::list<Block> released;
    std::size_t bytes;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      released.swap(idle_);
      bytes = idle_bytes_;
      idle_bytes_ = 0;
    }
    for (const Block& b : released) std::free(b.data);
    return bytes;
  }

 private:
  struct Block {
    void* data;
    std::size_t bytes;
  };
  std::mutex mutex_;
  std::unordered_map<void*, std::size_t> in_use_;
  std::list<Block> idle_;
  std::size_t idle_bytes_ = 0;
};

// Never destroyed: tensors may be freed while static objects are torn down at exit. A forked child
// starts a cache of its own (its mutex may have been held by another thread of the parent at the
// fork): the parent's kept blocks are left alone, and its blocks in use are freed when freed.
OutputCache* cache_in_process = nullptr;
OutputCache& output_cache() {
  static OutputCache* const first = [] {
    cache_in_process = new OutputCache;
    pthread_atfork(nullptr, nullptr, [] { cache_in_process = new OutputCache; });
    return cache_in_process;
  }();
  (void)first;
  return *cache_in_process;
}

void free_block(void* data) { output_cache().give(data); }

// 2 MiB-aligned blocks with madvise(MADV_HUGEPAGE) over their whole huge pages (what LibTorch does
// for every CPU tensor under THP_MEM_ALLOC_ENABLE=1), for the large outputs alone; anything
// smaller goes to LibTorch's CPU allocator (a resize of one of these tensors may). Freed blocks go
// to the output cache.
class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t bytes) override {
    if (bytes < kHugePageThreshold) return c10::GetCPUAllocator()->allocate(bytes);
    cache_capacity();  // read here, where a bad setting can throw (the deleter must not)
    const std::size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = output_cache().take(rounded);
    if (p == nullptr) {
      if (posix_memalign(&p, kHugePage, rounded) != 0 || p == nullptr)
        TORCH_CHECK(false, "fusedkd: out of memory allocating ", bytes, " bytes");
      madvise(p, rounded, MADV_HUGEPAGE);  // a hint: its failure changes nothing
      try {
        output_cache().track(p, rounded);
      } catch (...) {
        std::free(p);
        throw;
      }
    }
    // The context is the data pointer, as LibTorch's own CPU allocator has it (copy-on-write
    // clones require that); the cache knows each block's size.
    return {p, p, &free_block, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("FUSEDKD_CPU_HUGE_PAGES");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled;
}

bool use_huge_pages(const at::TensorOptions& options, std::size_t bytes) {
  return options.device().is_cpu() && !options.pinned_memory() && bytes >= kHugePageThreshold &&
         huge_pages_enabled();
}

c10::DispatchKeySet cpu_keys() { return c10::DispatchKeySet(c10::DispatchKey::CPU); }

HugePageAllocator& huge_page_allocator() {
  static HugePageAllocator allocator;
  return allocator;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const std::size_t bytes = static_cast<std::size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (!use_huge_pages(options, bytes)) return at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
  return at::detail::empty_generic(sizes, &huge_page_allocator(), cpu_keys(),
                                   c10::typeMetaToScalarType(options.dtype()), at::MemoryFormat::Contiguous);
}

at::Tensor converted_output(const at::Tensor& x, at::ScalarType type) {
  if (x.scalar_type() == type) return x;
  // A tensor that wraps another (functionalization and fake tensors while torch.compile traces,
  // vmap, a Python subclass) goes through the dispatcher: the allocator below makes a plain CPU
  // tensor, which such a trace cannot take.
  constexpr c10::DispatchKeySet kWrappers({c10::DispatchKey::Functionalize, c10::DispatchKey::Python,
                                           c10::DispatchKey::PythonTLSSnapshot, c10::DispatchKey::FuncTorchBatched,
                                           c10::DispatchKey::BatchedNestedTensor, c10::DispatchKey::FuncTorchGradWrapper});
  if (!x.is_contiguous() || x.key_set().has_any(kWrappers)) return x.to(type);  // (Tensor::to keeps the layout)
  return empty_output(x.sizes(), x.options().dtype(type)).copy_(x);
}

at::Tensor empty_strided_output(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options) {
  const std::size_t bytes = at::detail::computeStorageNbytes(sizes, strides, options.dtype().itemsize());
  if (!use_huge_pages(options, bytes)) return at::empty_strided(sizes, strides, options);
  return at::detail::empty_strided_generic(sizes, strides, &huge_page_allocator(), cpu_keys(),
                                           c10::typeMetaToScalarType(options.dtype()));
}

std::size_t release_cpu_output_cache() { return output_cache().release(); }

}  // namespace fusedkd::torch_ext

namespace fusedkd {

std::int64_t release_cpu_output_cache() { return static_cast<std::int64_t>(torch_ext::release_cpu_output_cache()); }

}  // namespace fusedkd
