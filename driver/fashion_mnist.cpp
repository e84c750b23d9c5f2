#include "fashion_mnist.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

namespace fusedkd::demo {

const std::array<const char*, kFashionClasses> kFashionClassNames = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};

namespace {

// Mean and standard deviation of the training images' pixels in [0, 1] (computed over all 60,000).
constexpr double kPixelMean = 0.2860405969887955;
constexpr double kPixelStd = 0.3530242445149223;

// Reads exactly `bytes` bytes; false at the end of the data.
bool read_exact(gzFile file, void* out, std::size_t bytes) {
  auto* p = static_cast<unsigned char*>(out);
  while (bytes > 0) {
    const unsigned int chunk = bytes > (1u << 30) ? (1u << 30) : static_cast<unsigned int>(bytes);
    const int got = gzread(file, p, chunk);
    if (got <= 0) return false;
    p += got;
    bytes -= static_cast<std::size_t>(got);
  }
  return true;
}

std::uint32_t big_endian(const unsigned char* b) {
  return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) | b[3];
}

// `name` or `name`.gz in `dir`.
std::string find_file(const std::string& dir, const std::string& name) {
  for (const std::string& candidate : {dir + "/" + name, dir + "/" + name + ".gz"})
    if (std::filesystem::exists(candidate)) return candidate;
  throw std::runtime_error("fusedkd demo: " + dir + "/" + name + "[.gz] not found (Fashion-MNIST: Debian package " +
                           "dataset-fashion-mnist, or --data DIR / FUSEDKD_FASHION_MNIST)");
}

Split load_split(const std::string& dir, const std::string& prefix) {
  const IdxArray images = read_idx(find_file(dir, prefix + "-images-idx3-ubyte"));
  const IdxArray labels = read_idx(find_file(dir, prefix + "-labels-idx1-ubyte"));
  if (images.dims.size() != 3 || images.dims[1] != 28 || images.dims[2] != 28)
    throw std::runtime_error("fusedkd demo: " + prefix + " images are not N x 28 x 28");
  if (labels.dims.size() != 1 || labels.dims[0] != images.dims[0])
    throw std::runtime_error("fusedkd demo: " + prefix + " has " + std::to_string(images.dims[0]) + " images but " +
                             std::to_string(labels.dims.empty() ? 0 : labels.dims[0]) + " labels");
  for (const std::uint8_t y : labels.data)
    if (y >= kFashionClasses)
      throw std::runtime_error("fusedkd demo: " + prefix + " has a label outside 0..9: " + std::to_string(y));
  const std::int64_t n = images.dims[0];
  Split split;
  at::Tensor raw = at::empty({n, 1, 28, 28}, at::kByte);
  std::copy(images.data.begin(), images.data.end(), raw.data_ptr<std::uint8_t>());
  split.images = (raw.to(at::kFloat) / 255.0 - kPixelMean) / kPixelStd;
  at::Tensor y = at::empty({n}, at::kByte);
  std::copy(labels.data.begin(), labels.data.end(), y.data_ptr<std::uint8_t>());
  split.labels = y.to(at::kLong);
  return split;
}

}  // namespace

IdxArray read_idx(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");  // reads uncompressed files as they are
  if (!file) throw std::runtime_error("fusedkd demo: cannot open " + path);
  struct Closer {
    gzFile f;
    ~Closer() { gzclose(f); }
  } closer{file};
  unsigned char magic[4];
  if (!read_exact(file, magic, 4)) throw std::runtime_error("fusedkd demo: " + path + " is empty or unreadable");
  if (magic[0] != 0 || magic[1] != 0)
    throw std::runtime_error("fusedkd demo: " + path + " is not an IDX file (bad magic number)");
  if (magic[2] != 0x08)
    throw std::runtime_error("fusedkd demo: " + path + " holds IDX type " + std::to_string(magic[2]) +
                             ", not unsigned bytes (8)");
  const int rank = magic[3];
  if (rank < 1) throw std::runtime_error("fusedkd demo: " + path + " has an IDX rank of 0");
  IdxArray array;
  std::uint64_t count = 1;
  for (int d = 0; d < rank; ++d) {
    unsigned char b[4];
    if (!read_exact(file, b, 4)) throw std::runtime_error("fusedkd demo: " + path + " ends inside its header");
    array.dims.push_back(big_endian(b));
    count *= big_endian(b);
    if (count > (std::uint64_t{1} << 34)) throw std::runtime_error("fusedkd demo: " + path + " is implausibly large");
  }
  array.data.resize(count);
  if (!read_exact(file, array.data.data(), count))
    throw std::runtime_error("fusedkd demo: " + path + " holds fewer values than its header says (" +
                             std::to_string(count) + ")");
  return array;
}

std::string fashion_mnist_dir(const std::string& dir) {
  if (!dir.empty()) return dir;
  if (const char* env = std::getenv("FUSEDKD_FASHION_MNIST"); env && *env) return env;
  return "/usr/share/datasets/fashion-mnist";
}

FashionMnist load_fashion_mnist(const std::string& dir) {
  return {load_split(dir, "train"), load_split(dir, "t10k")};
}

}  // namespace fusedkd::demo
