// fusedkd_demo: the Fashion-MNIST distillation study. Trains a CNN teacher on a training split,
// then students with plain cross-entropy, the controls and fusedkd's distillation losses at several
// label budgets, chooses every setting on a validation split, and reports the test set once.
// Writes results.md, results.json and results.svg into --out; see docs/distillation.md.
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/serialize.h>
#include <unistd.h>

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
#include "splits.h"
#include "study.h"

namespace demo = fusedkd::demo;

namespace {

const char* kUsage = R"(usage: fusedkd_demo [options]

The Fashion-MNIST distillation study. A CNN teacher is trained on a stratified training split of
the 60,000 training images (the rest is the validation split); students are trained with plain
cross-entropy, the controls and fusedkd's losses with a label budget, every choice (temperature,
alpha, checkpoint) is made on validation, and the test set is read once per final run.

  --data DIR              Fashion-MNIST files (default: $FUSEDKD_FASHION_MNIST, else
                          /usr/share/datasets/fashion-mnist)
  --out DIR               results.md, results.json, results.svg and the trained teacher
                          (default: out/demo)
  --full                  the full study: students cnn,mlp; labels 1000,5000,all (options after
                          it override these)
  --students LIST         cnn, mlp (default: mlp)
  --labels LIST           label budgets, numbers or "all" (default: 1000,all)
  --regimes LIST          for budgets below all: same (the labelled images only), transfer (the
                          soft term on every training image) (default: same,transfer)
  --methods LIST          default: ce,ce_ls,pseudo,kd_kl,kd_mse; all: )";

struct Options {
  std::string data, out = "out/demo", device = "auto";
  demo::StudyOptions study;
  int teacher_epochs = 6, teacher_shift = 2, threads = 0, validation_per_class = 1000;
  std::uint64_t split_seed = 0;
  std::int64_t train_limit = 0, test_limit = 0;
  bool retrain_teacher = false;
  std::string command;
};

void print_usage() {
  std::cout << kUsage;
  for (const demo::Method& m : demo::standard_methods()) std::cout << m.name << " ";
  std::cout << R"(
  --temperatures LIST     the grid's temperatures (default: 1,2,4,8)
  --alphas LIST           the grid's alphas, in (0, 1] for the balanced form (default: 0.5,0.9)
  --form F                balanced: (1 - alpha) CE + alpha T^2 D (default); seed: CE + alpha D
  --seeds N               seeds 0..N-1 per method (default 3)
  --steps N               optimiser steps per run, the same for every method (default 2000)
  --evaluations N         validation checks per run (default 20)
  --batch-size N          (default 128)
  --teacher-epochs N      (default 6)
  --teacher-shift P       train the teacher on images moved by up to P pixels (default 2; 0: none)
  --retrain-teacher       ignore a saved teacher in --out
  --validation-per-class N  validation images per class (default 1000: 50,000 / 10,000)
  --split-seed N          the training / validation split (default 0)
  --train-limit N         the first N images of the training split only (quick checks)
  --test-limit N          the first N test images only (quick checks)
  --device D              cpu, cuda or auto (cuda when available; default auto)
  --threads N             CPU threads (default: LibTorch's choice)
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

int non_negative_int(const std::string& flag, const std::string& value) {
  return parse_number<int>(flag, value, [](int v) { return v >= 0; }, "an integer of at least 0");
}

std::vector<double> number_list(const std::string& flag, const std::string& value, bool (*acceptable)(double),
                                const char* needs) {
  std::vector<double> out;
  for (const std::string& item : split_commas(value)) out.push_back(parse_number<double>(flag, item, acceptable, needs));
  if (out.empty()) throw std::invalid_argument(flag + " needs at least one value");
  return out;
}

template <typename T, typename Parse>
std::vector<T> name_list(const std::string& flag, const std::string& value, Parse parse) {
  std::vector<T> out;
  for (const std::string& item : split_commas(value)) out.push_back(parse(item));
  if (out.empty()) throw std::invalid_argument(flag + " needs at least one value");
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 0; i < argc; ++i) o.command += (i ? " " : "") + std::string(i ? argv[i] : "fusedkd_demo");
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
    if (flag == "--full") {
      o.study.students = {demo::StudentKind::Cnn, demo::StudentKind::Mlp};
      o.study.budgets = {1000, 5000, 0};
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value (see --help)");
    const std::string value = argv[++i];
    if (flag == "--data") o.data = value;
    else if (flag == "--out") o.out = value;
    else if (flag == "--students")
      o.study.students = name_list<demo::StudentKind>(flag, value, demo::parse_student);
    else if (flag == "--labels")
      o.study.budgets = name_list<std::int64_t>(flag, value, [&](const std::string& v) -> std::int64_t {
        return v == "all" ? 0 : positive_int(flag, v);
      });
    else if (flag == "--regimes") o.study.regimes = name_list<demo::Regime>(flag, value, demo::parse_regime);
    else if (flag == "--methods")
      o.study.methods = name_list<std::string>(flag, value, [](const std::string& v) { return demo::find_method(v).name; });
    else if (flag == "--temperatures")
      o.study.temperatures = number_list(
          flag, value, [](double t) { return t > 0 && std::isfinite(t); }, "positive numbers");
    else if (flag == "--alphas")
      o.study.alphas = number_list(
          flag, value, [](double a) { return a > 0 && std::isfinite(a); }, "positive numbers");
    else if (flag == "--form") o.study.form = demo::parse_form(value);
    else if (flag == "--seeds") o.study.seeds = positive_int(flag, value);
    else if (flag == "--steps") o.study.train.steps = positive_int(flag, value);
    else if (flag == "--evaluations") o.study.train.evaluations = positive_int(flag, value);
    else if (flag == "--batch-size") o.study.train.batch_size = positive_int(flag, value);
    else if (flag == "--teacher-epochs") o.teacher_epochs = positive_int(flag, value);
    else if (flag == "--teacher-shift") o.teacher_shift = non_negative_int(flag, value);
    else if (flag == "--validation-per-class") o.validation_per_class = positive_int(flag, value);
    else if (flag == "--split-seed") o.split_seed = static_cast<std::uint64_t>(non_negative_int(flag, value));
    else if (flag == "--train-limit") o.train_limit = positive_int(flag, value);
    else if (flag == "--test-limit") o.test_limit = positive_int(flag, value);
    else if (flag == "--threads") o.threads = positive_int(flag, value);
    else if (flag == "--device") o.device = value;
    else throw std::invalid_argument("unknown option " + flag + " (see --help)");
  }
  if (o.device != "cpu" && o.device != "cuda" && o.device != "auto")
    throw std::invalid_argument("--device must be cpu, cuda or auto, got '" + o.device + "'");
  if (o.study.form == demo::LossForm::Balanced)
    for (const double a : o.study.alphas)
      if (a > 1) {
        std::ostringstream text;
        text << "--alphas: the balanced form needs alpha in (0, 1], got " << a;
        throw std::invalid_argument(text.str());
      }
  return o;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  if (!f) throw std::runtime_error("cannot write " + path);
}

demo::Split take(const demo::Split& split, const at::Tensor& positions) {
  return {split.images.index_select(0, positions), split.labels.index_select(0, positions)};
}

demo::Split first(const demo::Split& split, std::int64_t n) {
  if (n <= 0 || n >= split.labels.size(0)) return split;
  return {split.images.narrow(0, 0, n), split.labels.narrow(0, 0, n)};
}

std::string minutes(double seconds) {
  char buffer[32];
  const int s = static_cast<int>(std::lround(seconds));
  std::snprintf(buffer, sizeof buffer, "%dm%02ds", s / 60, s % 60);
  return buffer;
}

// On a terminal one line rewritten in place; in a log, one line per finished run.
void show(const std::string& line, bool finished) {
  static const bool tty = isatty(STDOUT_FILENO) != 0;
  if (tty) {
    std::printf("\r%-160.160s", line.c_str());
    if (finished) std::printf("\n");
  } else if (finished) {
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

int run(const Options& o) {
  if (o.threads > 0) at::set_num_threads(o.threads);
  const bool cuda = o.device == "cuda" || (o.device == "auto" && torch::cuda::is_available());
  if (cuda && !torch::cuda::is_available()) throw std::runtime_error("--device cuda: no CUDA device is available");
  const torch::Device device = cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);

  const std::string dir = demo::fashion_mnist_dir(o.data);
  std::cout << "Loading Fashion-MNIST from " << dir << std::endl;
  const demo::FashionMnist all = demo::load_fashion_mnist(dir);
  const demo::TrainValidation split =
      demo::stratified_split(all.train.labels, o.validation_per_class, o.split_seed, demo::kFashionClasses);
  demo::StudyData data;
  data.train = first(take(all.train, split.train), o.train_limit);
  data.validation = take(all.train, split.validation);
  data.test = first(all.test, o.test_limit);
  std::filesystem::create_directories(o.out);
  std::cout << "Split (seed " << o.split_seed << "): " << data.train.labels.size(0) << " training, "
            << data.validation.labels.size(0) << " validation, " << data.test.labels.size(0) << " test images"
            << std::endl;

  // The teacher: trained once on every training label and kept in --out, named by what made it.
  demo::TrainOptions teacher_options;
  teacher_options.batch_size = o.study.train.batch_size;
  teacher_options.device = device;
  teacher_options.seed = 1000;  // apart from the students' seeds
  const std::int64_t n = data.train.labels.size(0);
  teacher_options.steps = static_cast<int>(o.teacher_epochs * ((n + teacher_options.batch_size - 1) / teacher_options.batch_size));
  teacher_options.evaluations = o.teacher_epochs;
  demo::TeacherNet teacher;
  const std::string teacher_path = o.out + "/teacher_v2_e" + std::to_string(o.teacher_epochs) + "_shift" +
                                   std::to_string(o.teacher_shift) + "_split" + std::to_string(o.split_seed) + "_v" +
                                   std::to_string(o.validation_per_class) + "_n" + std::to_string(n) + "_b" +
                                   std::to_string(teacher_options.batch_size) + ".pt";
  if (!o.retrain_teacher && std::filesystem::exists(teacher_path)) {
    std::cout << "Teacher: loading " << teacher_path << " (--retrain-teacher to train it again)" << std::endl;
    torch::load(teacher, teacher_path, device);
    teacher->to(device);
    teacher->eval();
  } else {
    std::cout << "Teacher: training for " << o.teacher_epochs << " epochs (shifts up to " << o.teacher_shift
              << " px)" << std::endl;
    demo::train_teacher(teacher, data.train, data.validation, o.teacher_shift, teacher_options,
                        [&](int step, int steps, const demo::Checkpoint& c) {
                          char line[200];
                          std::snprintf(line, sizeof line,
                                        "  teacher: epoch %d/%d (step %d/%d), loss %.4f, validation %.2f%%",
                                        step * o.teacher_epochs / steps, o.teacher_epochs, step, steps, c.train_loss,
                                        100.0 * c.validation_accuracy);
                          show(line, true);
                        });
    torch::save(teacher, teacher_path);
  }
  bool features = false;
  for (const std::string& name : o.study.methods)
    features = features || demo::find_method(name).feature != demo::FeatureLoss::None;
  std::tie(data.teacher_logits, data.teacher_features) =
      demo::predict(*teacher, [&](const torch::Tensor& x) { return teacher->forward(x); }, data.train.images, device,
                    features);
  demo::StudySetup setup;
  setup.teacher_validation_accuracy =
      demo::accuracy_of(demo::predict_logits(teacher, data.validation.images, device), data.validation.labels);
  setup.teacher_test = demo::classification_metrics(demo::predict_logits(teacher, data.test.images, device), data.test.labels);
  std::printf("Teacher: validation accuracy %.2f%%, test accuracy %.2f%%\n", 100.0 * setup.teacher_validation_accuracy,
              100.0 * setup.teacher_test.accuracy);
  std::fflush(stdout);

  demo::StudyOptions study = o.study;
  study.train.device = device;
  const demo::StudyResult result =
      demo::run_study(study, data, setup.teacher_test.accuracy, [](const demo::StudyStatus& s) {
        char line[768];
        const double left = s.share_done > 0 ? s.seconds / s.share_done * (1.0 - s.share_done) : 0.0;
        std::snprintf(line, sizeof line, "[%d/%d runs, %s, %.0f steps/s, about %s left] %s", s.runs_finished,
                      s.runs_planned, minutes(s.seconds).c_str(), s.steps_per_second, minutes(left).c_str(),
                      s.run.c_str());
        show(line, s.run_finished);
      });

  setup.command = o.command;
  setup.device = cuda ? "cuda" : "cpu";
  setup.threads = at::get_num_threads();
  setup.train_images = static_cast<int>(data.train.labels.size(0));
  setup.validation_images = static_cast<int>(data.validation.labels.size(0));
  setup.test_images = static_cast<int>(data.test.labels.size(0));
  setup.split_seed = o.split_seed;
  setup.teacher = "CNN, " + std::to_string(demo::parameter_count(*teacher)) + " parameters, " +
                  std::to_string(o.teacher_epochs) + " epochs on every training label" +
                  (o.teacher_shift > 0 ? ", images moved by up to " + std::to_string(o.teacher_shift) + " pixels" : "");
  setup.options = study;
  const std::string report = demo::markdown_report(setup, result);
  write_file(o.out + "/results.md", report);
  write_file(o.out + "/results.json", demo::json_report(setup, result));
  write_file(o.out + "/results.svg", demo::svg_plot(setup, result));
  std::cout << "\n" << report << "\nReport: " << std::filesystem::absolute(o.out).string()
            << "/results.md (with results.json and the plot results.svg)\n";
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
