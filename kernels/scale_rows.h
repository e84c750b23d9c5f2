// The gradient scaling's per-row case, shared by the CPU and CUDA launchers (fusedkd/scale.h):
// scale_elements with one factor per run of factor_group elements is scale_rows over those runs.
#pragma once

#include "fusedkd/scale.h"

namespace fusedkd::detail {

// Neither one factor for all nor one per element.
inline bool scales_by_rows(const ScaleElementsArgs& a) { return a.factor_group > 1 && a.factor_group < a.numel; }

inline ScaleRowsArgs as_rows(const ScaleElementsArgs& a) {
  ScaleRowsArgs rows;
  rows.grad = a.data;
  rows.grad_dtype = a.dtype;
  rows.rows = a.numel / a.factor_group;
  rows.cols = a.factor_group;
  rows.grad_output = a.factors;
  rows.grad_output_is_double = a.factors_are_double;
  rows.per_row = true;
  return rows;
}

}  // namespace fusedkd::detail
