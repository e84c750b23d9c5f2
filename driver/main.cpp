// fusedkd_demo: trains a CNN teacher on Fashion-MNIST, then distils a small CNN student from it
// with each of fusedkd's losses (and trains it plainly), and compares them on the test set.
// Writes results.md, results.json and results.svg into --out; see docs/distillation.md.
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/serialize.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "distill.h"
#include "fashion_mnist.h"
#include "report.h"

namespace demo = fusedkd::demo;

namespace {

const char* kUsage = R"(usage: fusedkd_demo [options]

Trains a teacher CNN on Fashion-MNIST, then a small student CNN with each method (plain
cross-entropy and fusedkd's distillation losses), and compares them on the test set.

  --data DIR            Fashion-MNIST files (default: $FUSEDKD_FASHION_MNIST, else
                        /usr/share/datasets/fashion-mnist)
  --out DIR             results.md, results.json, results.svg and the trained teacher
                        (default: out/demo)
  --methods A,B,...     methods to run (default: all): )";

struct Options {
  std::string data, out = "out/demo", device = "auto";
  std::vector<std::string> methods;
  int epochs = 5, teacher_epochs = 8, seeds = 3, batch_size = 128, threads = 0;
  std::int64_t train_limit = 0, test_limit = 0;
  double temperature = 0;  // 0: each method's own
  bool retrain_teacher = false;
};

void print_usage() {
  std::cout << kUsage;
  for (const demo::Method& m : demo::standard_methods()) std::cout << m.name << " ";
  std::cout << R"(
  --epochs N            student epochs (default 5)
  --teacher-epochs N    teacher epochs (default 8)
  --seeds N             students per method, seeds 0..N-1 (default 3)
  --batch-size N        (default 128)
  --train-limit N       use the first N training images (default: all 60,000)
  --test-limit N        use the first N test images (default: all 10,000)
  --temperature T       use temperature T for every distillation method (default: each
                        method's own, as listed in results.md)
  --device D            cpu, cuda or auto (cuda when available; default auto)
  --threads N           CPU threads (default: LibTorch's choice)
  --retrain-teacher     ignore a saved teacher in --out
  --help
)";
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// `value` as a T (all of it), or an error naming the flag and what it needs.
template <typename T>
T parse_number(const std::string& flag, const std::string& value, bool (*acceptable)(T), const char* needs) {
  std::size_t used = 0;
  T v{};
  try {
    if constexpr (std::is_integral_v<T>) v = static_cast<T>(std::stoll(value, &used));
    else v = static_cast<T>(std::stod(value, &used));
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || value.empty() || !acceptable(v))
    throw std::invalid_argument(flag + " needs " + needs + ", got '" + value + "'");
  return v;
}

int positive_int(const std::string& flag, const std::string& value) {
  return parse_number<int>(flag, value, [](int v) { return v >= 1; }, "an integer of at least 1");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      print_usage();
      std::exit(0);
    }
    if (flag == "--retrain-teacher") {
      o.retrain_teacher = true;
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value (see --help)");
    const std::string value = argv[++i];
    if (flag == "--data") o.data = value;
    else if (flag == "--out") o.out = value;
    else if (flag == "--methods") o.methods = split_commas(value);
    else if (flag == "--epochs") o.epochs = positive_int(flag, value);
    else if (flag == "--teacher-epochs") o.teacher_epochs = positive_int(flag, value);
    else if (flag == "--seeds") o.seeds = positive_int(flag, value);
    else if (flag == "--batch-size") o.batch_size = positive_int(flag, value);
    else if (flag == "--train-limit") o.train_limit = positive_int(flag, value);
    else if (flag == "--test-limit") o.test_limit = positive_int(flag, value);
    else if (flag == "--threads") o.threads = positive_int(flag, value);
    else if (flag == "--device") o.device = value;
    else if (flag == "--temperature")
      o.temperature = parse_number<double>(
          flag, value, [](double t) { return t > 0 && std::isfinite(t); }, "a positive number");
    else throw std::invalid_argument("unknown option " + flag + " (see --help)");
  }
  if (o.device != "cpu" && o.device != "cuda" && o.device != "auto")
    throw std::invalid_argument("--device must be cpu, cuda or auto, got '" + o.device + "'");
  return o;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  if (!f) throw std::runtime_error("cannot write " + path);
}

void limit(demo::Split& split, std::int64_t n) {
  if (n <= 0 || n >= split.labels.size(0)) return;
  split.images = split.images.narrow(0, 0, n);
  split.labels = split.labels.narrow(0, 0, n);
}

std::string accuracy_line(const demo::EpochRecord& e) {
  char buffer[128];
  std::snprintf(buffer, sizeof buffer, "epoch %d: loss %.4f, test accuracy %.2f%% (%.1f s)", e.epoch, e.train_loss,
                100.0 * e.test_accuracy, e.seconds);
  return buffer;
}

int run(const Options& o) {
  if (o.threads > 0) at::set_num_threads(o.threads);
  const bool cuda = o.device == "cuda" || (o.device == "auto" && torch::cuda::is_available());
  if (cuda && !torch::cuda::is_available()) throw std::runtime_error("--device cuda: no CUDA device is available");
  const torch::Device device = cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);

  std::vector<demo::Method> methods;
  if (o.methods.empty()) methods = demo::standard_methods();
  for (const std::string& name : o.methods) methods.push_back(demo::find_method(name));
  if (o.temperature > 0) {
    std::ostringstream t;
    t << o.temperature;
    for (demo::Method& m : methods) {
      if (m.divergence.empty()) continue;
      m.temperature = o.temperature;
      m.description += " [run at T=" + t.str() + " (--temperature)]";
    }
  }

  const std::string dir = demo::fashion_mnist_dir(o.data);
  std::cout << "Loading Fashion-MNIST from " << dir << std::endl;
  demo::FashionMnist data = demo::load_fashion_mnist(dir);
  limit(data.train, o.train_limit);
  limit(data.test, o.test_limit);
  std::filesystem::create_directories(o.out);

  demo::TrainOptions train;
  train.batch_size = o.batch_size;
  train.device = device;

  // The teacher, trained once per (architecture version, epochs, training images, batch size) and
  // kept in --out.
  demo::TeacherNet teacher;
  demo::RunResult teacher_result;
  const std::string teacher_path = o.out + "/teacher_v1_e" + std::to_string(o.teacher_epochs) + "_n" +
                                   std::to_string(data.train.labels.size(0)) + "_b" + std::to_string(o.batch_size) +
                                   ".pt";
  if (!o.retrain_teacher && std::filesystem::exists(teacher_path)) {
    std::cout << "Teacher: loading " << teacher_path << " (--retrain-teacher to train it again)" << std::endl;
    torch::load(teacher, teacher_path, device);  // a teacher saved on another device loads onto this one
    teacher->to(device);
    teacher->eval();
    teacher_result.method = "teacher";
    teacher_result.test = demo::classification_metrics(demo::predict_logits(teacher, data.test.images, device),
                                                       data.test.labels);
  } else {
    std::cout << "Teacher: training for " << o.teacher_epochs << " epochs" << std::endl;
    train.epochs = o.teacher_epochs;
    train.seed = 1000;  // apart from the students' seeds
    teacher_result = demo::train_teacher(teacher, data, train, [](const demo::EpochRecord& e) {
      std::cout << "  " << accuracy_line(e) << std::endl;
    });
    torch::save(teacher, teacher_path);
  }
  std::printf("Teacher: test accuracy %.2f%%\n", 100.0 * teacher_result.test.accuracy);
  std::fflush(stdout);
  bool need_features = false;
  for (const demo::Method& m : methods) need_features = need_features || m.feature != demo::FeatureLoss::None;
  const demo::TeacherTargets targets = demo::teacher_targets(teacher, data.train.images, device, need_features);

  std::vector<demo::RunResult> runs;
  train.epochs = o.epochs;
  for (int seed = 0; seed < o.seeds; ++seed) {
    for (const demo::Method& method : methods) {
      train.seed = static_cast<std::uint64_t>(seed);
      std::cout << "Student " << method.name << ", seed " << seed << std::endl;
      runs.push_back(demo::train_student(method, targets, data, train,
                                         [](const demo::EpochRecord& e) {
                                           std::cout << "  " << accuracy_line(e) << std::endl;
                                         }));
    }
  }

  demo::DemoSetup setup;
  setup.device = cuda ? "cuda" : "cpu";
  setup.threads = at::get_num_threads();
  setup.train_images = static_cast<int>(data.train.labels.size(0));
  setup.test_images = static_cast<int>(data.test.labels.size(0));
  setup.teacher_epochs = o.teacher_epochs;
  setup.student_epochs = o.epochs;
  setup.seeds = o.seeds;
  setup.batch_size = o.batch_size;
  setup.teacher_parameters = demo::parameter_count(*teacher);
  setup.student_parameters = demo::parameter_count(*demo::StudentNet());
  const std::vector<demo::MethodSummary> summaries = demo::summarize(runs, methods);
  const std::string table = demo::markdown_report(setup, teacher_result, summaries);
  write_file(o.out + "/results.md", table);
  write_file(o.out + "/results.json", demo::json_report(setup, teacher_result, summaries, runs));
  write_file(o.out + "/results.svg", demo::svg_plot(teacher_result, summaries));
  std::cout << "\n" << table << "\nWrote " << o.out << "/results.md, results.json and results.svg\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "fusedkd_demo: " << e.what() << "\n";
    return 1;
  }
}
