// The Fashion-MNIST study's protocol and reports (driver/): the cells and pools it plans, the test
// set never steering a choice, the goal check, and the Markdown, JSON and SVG reports.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "driver_test_support.h"
#include "metrics.h"
#include "report.h"
#include "study.h"

namespace demo = fusedkd::demo;

namespace {

using fusedkd::testing::have_real_data;
using fusedkd::testing::tiny_study_data;

// ---------------------------------------------------------------- the study's protocol and reports

demo::StudyOptions tiny_study_options() {
  demo::StudyOptions o;
  o.budgets = {100, 0};
  o.methods = {"ce", "ce_ls", "pseudo", "kd_kl"};
  o.temperatures = {1, 4};
  o.alphas = {0.5, 0.9};
  o.seeds = 2;
  o.train.steps = 30;
  o.train.evaluations = 3;
  o.train.batch_size = 64;
  return o;
}

TEST(Study, PlansCellsAndPools) {
  demo::StudyOptions o = tiny_study_options();
  o.students = {demo::StudentKind::Mlp, demo::StudentKind::Cnn};
  o.methods = {"ce", "pseudo", "kd_kl", "kd_kl_attention"};
  const std::vector<demo::PlannedCell> cells = demo::plan_cells(o, 2000);
  ASSERT_EQ(cells.size(), 6u);  // per student: 100 same, 100 transfer, 2000 (all)
  const auto names = [](const demo::PlannedCell& p) {
    std::string s;
    for (const demo::Method& m : p.methods) s += m.name + " ";
    return s;
  };
  EXPECT_EQ(demo::cell_name(cells[0].cell), "mlp, 100 labels, same images");
  EXPECT_EQ(names(cells[0]), "ce kd_kl ");
  EXPECT_EQ(names(cells[1]), "ce pseudo kd_kl ");  // pseudo-labels need unlabelled images
  EXPECT_EQ(cells[2].cell.regime, demo::Regime::Full);
  EXPECT_EQ(cells[2].cell.budget, 2000);
  EXPECT_EQ(names(cells[4]), "ce pseudo kd_kl kd_kl_attention ");  // feature maps: CNN only

  const at::Tensor labels = torch::arange(2000, torch::kLong).remainder(10);
  const demo::Pool transfer = demo::make_pool(cells[1].cell, demo::find_method("kd_kl"), labels, 1);
  EXPECT_EQ(transfer.index.size(0), 2000);
  EXPECT_FALSE(transfer.all_labelled);
  const at::Tensor given = transfer.labels != demo::kUnlabelled;
  EXPECT_EQ(given.sum().item<std::int64_t>(), 100);
  EXPECT_TRUE(torch::equal(transfer.labels.masked_select(given), labels.masked_select(given)));
  const demo::Pool control = demo::make_pool(cells[1].cell, demo::find_method("ce"), labels, 1);
  EXPECT_TRUE(torch::equal(control.index, given.nonzero().flatten()));  // the same labelled images
  EXPECT_TRUE(control.all_labelled);
}

// Every choice is made without the test set: poisoning its labels changes the test figures and
// nothing else.
TEST(Study, SelectionNeverReadsTheTestSet) {
  if (!have_real_data()) GTEST_SKIP() << "skipped: Fashion-MNIST not found";
  const demo::StudyData clean = tiny_study_data();
  demo::StudyData poisoned = clean;
  poisoned.test.labels = (clean.test.labels + 1).remainder(10);
  const demo::StudyOptions options = tiny_study_options();
  const demo::StudyResult a = demo::run_study(options, clean, 0.9);
  const demo::StudyResult b = demo::run_study(options, poisoned, 0.9);
  ASSERT_EQ(a.arms.size(), 10u);  // 100 same: ce ce_ls kd_kl; transfer: + pseudo; all: ce ce_ls kd_kl
  ASSERT_EQ(a.arms.size(), b.arms.size());
  EXPECT_EQ(a.runs_trained, b.runs_trained);
  EXPECT_EQ(a.runs_trained, 25);  // controls shared by the two regimes of a budget; seed 0 of the chosen point reused
  for (std::size_t i = 0; i < a.arms.size(); ++i) {
    const demo::ArmResult &x = a.arms[i], &y = b.arms[i];
    EXPECT_EQ(x.chosen.temperature, y.chosen.temperature) << i;
    EXPECT_EQ(x.chosen.alpha, y.chosen.alpha) << i;
    ASSERT_EQ(x.grid.size(), y.grid.size());
    for (std::size_t g = 0; g < x.grid.size(); ++g)
      EXPECT_EQ(x.grid[g].validation_accuracy, y.grid[g].validation_accuracy) << i << " " << g;
    ASSERT_EQ(x.runs.size(), 2u);
    for (std::size_t r = 0; r < x.runs.size(); ++r) {
      EXPECT_EQ(x.runs[r].log.best_step, y.runs[r].log.best_step);
      EXPECT_EQ(x.runs[r].log.best_validation_accuracy, y.runs[r].log.best_validation_accuracy);
    }
    EXPECT_GT(x.accuracy_mean, y.accuracy_mean + 0.2) << i;  // the test figures did see the poison
  }
  // Paired differences and the goal check, from the runs.
  const demo::ArmResult& ce = a.arms[0];
  const demo::ArmResult& kd = a.arms[2];
  ASSERT_EQ(kd.method.name, "kd_kl");
  EXPECT_NEAR(kd.vs_ce.mean,
              ((kd.runs[0].test.accuracy - ce.runs[0].test.accuracy) + (kd.runs[1].test.accuracy - ce.runs[1].test.accuracy)) / 2,
              1e-15);
  EXPECT_NEAR(kd.gap_closed, kd.vs_ce.mean / (0.9 - ce.accuracy_mean), 1e-12);
}

TEST(Study, GoalNeedsEverySeedTwoDeviationsAndAThirdOfTheGap) {
  demo::ArmResult a;
  a.vs_ce = {true, 0.03, 0.01, 3, 3};
  a.has_gap = true;
  a.gap_closed = 0.4;
  EXPECT_TRUE(demo::meets_goal(a));
  a.vs_ce.std = 0.016;  // 0.03 < 2 * 0.016
  EXPECT_FALSE(demo::meets_goal(a));
  a.vs_ce = {true, 0.03, 0.01, 2, 3};
  EXPECT_FALSE(demo::meets_goal(a));
  a.vs_ce = {true, 0.03, 0.01, 3, 3};
  a.gap_closed = 0.29;
  EXPECT_FALSE(demo::meets_goal(a));
}

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(Report, TablesJsonAndPlot) {
  if (!have_real_data()) GTEST_SKIP() << "skipped: Fashion-MNIST not found";
  const demo::StudyData data = tiny_study_data();
  const demo::StudyOptions options = tiny_study_options();
  const demo::StudyResult result = demo::run_study(options, data, 0.9);
  demo::StudySetup setup;
  setup.command = "fusedkd_demo --a \"quoted\" <arg>";
  setup.options = options;
  setup.teacher_test = demo::classification_metrics(data.teacher_logits, data.train.labels);

  const std::string md = demo::markdown_report(setup, result);
  EXPECT_NE(md.find("## mlp, 100 labels, transfer set"), std::string::npos) << md;
  EXPECT_NE(md.find("| mlp, 100 labels, same images | kd_kl |"), std::string::npos) << md;
  EXPECT_EQ(count(md, "Validation accuracy (seed 0) over the grid"), 3);
  EXPECT_EQ(count(md, "**"), 2 * 3);  // the chosen grid point per cell

  const std::string json = demo::json_report(setup, result);
  EXPECT_NE(json.find("\"command\": \"fusedkd_demo --a \\\"quoted\\\" <arg>\""), std::string::npos);
  EXPECT_EQ(count(json, "\"method\": \"pseudo\""), 1);
  EXPECT_EQ(count(json, "\"confusion\": [["), 1 + 2 * 10);  // the teacher and every seed of every arm
  EXPECT_NE(json.find("\"classes\": [\"T-shirt/top\", \"Trouser\","), std::string::npos);
  EXPECT_EQ(count(json, "\"vs_ce\": null"), 3);  // ce itself, in each cell

  const std::string svg = demo::svg_plot(setup, result);
  EXPECT_EQ(svg.rfind("<svg ", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  // ce, ce_ls; kd_kl (same), kd_kl (transfer); pseudo (transfer).
  EXPECT_EQ(count(svg, "class=\"series\""), 5);
  EXPECT_NE(svg.find("<title>kd_kl (transfer)</title>"), std::string::npos);
}

}  // namespace
