// Argument checks shared by the CPU and CUDA kernels of each op, so both reject the same inputs
// with the same message.  The Python wrappers check first and more kindly; these guard direct
// torch.ops calls.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <limits>
#include <tuple>

// The sample dtypes every SGLD kernel is instantiated for (math is float32 throughout).
#define GEDI_DISPATCH_SAMPLE_TYPES(TYPE, NAME, ...)            \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace gedi_fast {

inline void check_sample_dtype(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, "gedi_fast: ", name,
              " must be float32, float16 or bfloat16, got ", dtype);
}

inline void check_device_offset(const c10::optional<at::Tensor>& device_offset, const at::Tensor& x) {
  if (!device_offset.has_value()) return;
  const at::Tensor& t = *device_offset;
  TORCH_CHECK(t.scalar_type() == at::kLong && t.numel() == 1,
              "gedi_fast: device_offset must be a one-element int64 tensor, got ", t.scalar_type(),
              " with ", t.numel(), " elements");
  TORCH_CHECK(t.device() == x.device(), "gedi_fast: device_offset must be on ", x.device(), ", got ",
              t.device());
}

inline void check_sgld_args(const at::Tensor& x, const at::Tensor& grad,
                            const c10::optional<at::Tensor>& device_offset) {
  check_sample_dtype(x, "x");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "gedi_fast: grad must have x's dtype ",
              x.scalar_type(), ", got ", grad.scalar_type());
  TORCH_CHECK(grad.sizes() == x.sizes(), "gedi_fast: grad must have x's shape ", x.sizes(), ", got ",
              grad.sizes());
  TORCH_CHECK(grad.device() == x.device(), "gedi_fast: grad must be on x's device ", x.device(),
              ", got ", grad.device());
  TORCH_CHECK(x.is_contiguous() && grad.is_contiguous(), "gedi_fast: x and grad must be contiguous");
  TORCH_CHECK(at::get_overlap_status(x, grad) == at::MemOverlapStatus::No,
              "gedi_fast: grad must not share memory with x (x is updated in place while grad is read)");
  check_device_offset(device_offset, x);
}

inline void check_buffer_draw_args(const at::Tensor& buffer, const at::Tensor& indices, double reinit_prob,
                                   double low, double high,
                                   const c10::optional<at::Tensor>& device_offset) {
  check_sample_dtype(buffer, "buffer");
  TORCH_CHECK(buffer.dim() >= 1 && buffer.numel() > 0,
              "gedi_fast: buffer must have at least one non-empty row, got shape ", buffer.sizes());
  TORCH_CHECK(buffer.is_contiguous(), "gedi_fast: buffer must be contiguous");
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.dim() == 1,
              "gedi_fast: indices must be a 1-D int64 tensor, got ", indices.scalar_type(), " of shape ",
              indices.sizes());
  TORCH_CHECK(indices.device() == buffer.device(), "gedi_fast: indices must be on buffer's device ",
              buffer.device(), ", got ", indices.device());
  TORCH_CHECK(reinit_prob >= 0.0 && reinit_prob <= 1.0, "gedi_fast: reinit_prob must lie in [0, 1], got ",
              reinit_prob);
  TORCH_CHECK(low < high, "gedi_fast: low must be below high, got [", low, ", ", high, ")");
  check_device_offset(device_offset, buffer);
}

// The outputs of buffer_draw: the drawn rows (indices.size(0) x buffer's row shape) and the re-init mask.
inline std::tuple<at::Tensor, at::Tensor> allocate_draw_outputs(const at::Tensor& buffer, const at::Tensor& indices) {
  auto shape = buffer.sizes().vec();
  shape[0] = indices.size(0);
  return {at::empty(shape, buffer.options()), at::empty({indices.size(0)}, indices.options().dtype(at::kBool))};
}

// A missing clamp bound is an infinite one, so the kernels clamp unconditionally.
inline float clamp_bound(const c10::optional<double>& bound, float missing) {
  return bound.has_value() ? static_cast<float>(*bound) : missing;
}

constexpr float kInf = std::numeric_limits<float>::infinity();

}  // namespace gedi_fast
