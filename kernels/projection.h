// projected_feature_mse on either backend is the projection y = W x (GEMMs), then feature_mse's
// squared-error pass over y + bias against the teacher, with dL/dy written over y. That pass's
// arguments, built once for both launchers:
#pragma once

#include "fusedkd/feature.h"

namespace fusedkd::detail {

inline FeatureMseArgs projection_error_args(const ProjectedFeatureMseArgs& a) {
  const ProjectionShape& s = a.shape;
  FeatureMseArgs mse;
  mse.student = a.projection;
  mse.student_dtype = s.is_double ? DType::Float64 : DType::Float32;
  mse.teacher = a.teacher;
  mse.teacher_dtype = a.teacher_dtype;
  mse.numel = s.batch * s.out_channels * s.spatial;
  mse.bias = a.bias;
  mse.bias_channels = s.out_channels;
  mse.bias_inner = s.channels_last ? 1 : s.spatial;
  mse.scale = a.scale;
  mse.elementwise_loss = a.elementwise_loss;
  mse.loss = a.loss;
  mse.grad_student = a.write_gradient ? a.projection : nullptr;  // dL/dy replaces y
  mse.grad_teacher = a.grad_teacher;
  mse.workspace = a.workspace;
  return mse;
}

}  // namespace fusedkd::detail
