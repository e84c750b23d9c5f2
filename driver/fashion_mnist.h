// Fashion-MNIST (Zalando): 28x28 grey images of 10 kinds of clothing, 60,000 for training and
// 10,000 for testing, in the IDX format of MNIST (plain or gzip-compressed files).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace fusedkd::demo {

constexpr int kFashionClasses = 10;
extern const std::array<const char*, kFashionClasses> kFashionClassNames;

// An IDX file's contents: its dimensions and its unsigned bytes (row-major).
struct IdxArray {
  std::vector<std::int64_t> dims;
  std::vector<std::uint8_t> data;
};

// Reads an IDX file of unsigned bytes (type code 0x08), gzip-compressed or not. Throws
// std::runtime_error naming the file for a missing file, a wrong magic number, another element
// type, or fewer bytes than the header promises.
IdxArray read_idx(const std::string& path);

struct Split {
  at::Tensor images;  // float32 [N, 1, 28, 28], normalised with the training set's mean and std
  at::Tensor labels;  // int64 [N], 0..9
};

struct FashionMnist {
  Split train;
  Split test;
};

// The directory holding the four files: `dir` when not empty, else $FUSEDKD_FASHION_MNIST, else
// Debian's /usr/share/datasets/fashion-mnist (package dataset-fashion-mnist).
std::string fashion_mnist_dir(const std::string& dir = "");

// Loads both splits from `dir` (train-images-idx3-ubyte[.gz] and so on). Checks that the images
// are 28x28, that each split has as many labels as images and that every label is in 0..9.
FashionMnist load_fashion_mnist(const std::string& dir);

}  // namespace fusedkd::demo
