#include "outputs.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

namespace fusedkd::torch_ext {
namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

void free_huge(void* p) { std::free(p); }

// 2 MiB-aligned blocks with madvise(MADV_HUGEPAGE) over their whole huge pages (what LibTorch does
// for every CPU tensor under THP_MEM_ALLOC_ENABLE=1), for the large outputs alone; anything
// smaller goes to LibTorch's CPU allocator (a resize of one of these tensors may).
class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t bytes) override {
    if (bytes < kHugePageThreshold) return c10::GetCPUAllocator()->allocate(bytes);
    void* p = nullptr;
    if (posix_memalign(&p, kHugePage, bytes) != 0 || p == nullptr)
      TORCH_CHECK(false, "fusedkd: out of memory allocating ", bytes, " bytes");
    madvise(p, bytes / kHugePage * kHugePage, MADV_HUGEPAGE);  // a hint: its failure changes nothing
    return {p, p, &free_huge, c10::Device(c10::DeviceType::CPU)};
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

}  // namespace fusedkd::torch_ext
