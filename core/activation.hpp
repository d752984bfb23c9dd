// Expert activations and their derivatives, evaluated in double precision.
#pragma once

#include <math.h>

#include "core/portable.hpp"
#include "moe/moe.h"

namespace moe {

MOE_HOST_DEVICE inline double sigmoid(double x) {
  return x >= 0 ? 1.0 / (1.0 + ::exp(-x)) : ::exp(x) / (1.0 + ::exp(x));
}

// log(sigmoid(x)) for every x: sigmoid itself is 0 in double below about -745, and the
// sigmoid router's probabilities and renormalized gates are ratios of such values.
MOE_HOST_DEVICE inline double log_sigmoid(double x) {
  return x >= 0 ? -::log1p(::exp(-x)) : x - ::log1p(::exp(x));
}

// The scalar activation (for gated kinds: the one applied to the gate half).
MOE_HOST_DEVICE inline double activate(moe_activation_t kind, double x) {
  constexpr double kInvSqrt2 = 0.70710678118654752440;
  constexpr double kSqrt2OverPi = 0.79788456080286535588;
  switch (kind) {
    case MOE_ACTIVATION_RELU: return x > 0 ? x : 0.0;
    case MOE_ACTIVATION_GELU:
    case MOE_ACTIVATION_GEGLU: return 0.5 * x * (1.0 + ::erf(x * kInvSqrt2));
    case MOE_ACTIVATION_GELU_TANH:
      return 0.5 * x * (1.0 + ::tanh(kSqrt2OverPi * (x + 0.044715 * x * x * x)));
    case MOE_ACTIVATION_SILU:
    case MOE_ACTIVATION_SWIGLU: return x * sigmoid(x);
  }
  return 0.0;
}

// d activate(kind, x) / dx. relu'(0) = 0, as PyTorch.
MOE_HOST_DEVICE inline double activate_derivative(moe_activation_t kind, double x) {
  constexpr double kInvSqrt2 = 0.70710678118654752440;
  constexpr double kInvSqrt2Pi = 0.39894228040143267794;
  constexpr double kSqrt2OverPi = 0.79788456080286535588;
  switch (kind) {
    case MOE_ACTIVATION_RELU: return x > 0 ? 1.0 : 0.0;
    case MOE_ACTIVATION_GELU:
    case MOE_ACTIVATION_GEGLU:
      return 0.5 * (1.0 + ::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * ::exp(-0.5 * x * x);
    case MOE_ACTIVATION_GELU_TANH: {
      const double inner = kSqrt2OverPi * (x + 0.044715 * x * x * x);
      const double t = ::tanh(inner);
      const double d_inner = kSqrt2OverPi * (1.0 + 3.0 * 0.044715 * x * x);
      return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner;
    }
    case MOE_ACTIVATION_SILU:
    case MOE_ACTIVATION_SWIGLU: {
      const double s = sigmoid(x);
      return s * (1.0 + x * (1.0 - s));
    }
  }
  return 0.0;
}

}  // namespace moe
