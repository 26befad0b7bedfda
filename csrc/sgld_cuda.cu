// CUDA kernels of gedi_fast::sgld_step_ and gedi_fast::buffer_draw.
//
// One thread owns one Philox group (4 consecutive elements), so the noise matches the CPU kernel
// for any launch shape.  No host synchronisation: the optional device_offset is read by the kernel,
// which lets a captured CUDA graph draw fresh noise on every replay when the caller advances it.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "sgld_math.h"

namespace gedi_fast {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

__device__ __forceinline__ uint64_t counter_offset(uint64_t offset, const int64_t* device_offset) {
  return device_offset == nullptr ? offset : offset + static_cast<uint64_t>(*device_offset);
}

// Enough blocks to give every thread one group; past the cap the kernels' grid-stride loops take over.
int blocks_for(int64_t groups) {
  constexpr int64_t kMaxBlocks = int64_t(1) << 20;
  return static_cast<int>(std::max<int64_t>(1, std::min(kMaxBlocks, (groups + kThreads - 1) / kThreads)));
}

template <typename T>
__global__ void sgld_step_kernel(T* __restrict__ x, const T* __restrict__ grad, int64_t numel, float step_size,
                                 float noise_std, uint64_t seed, uint64_t offset,
                                 const int64_t* __restrict__ device_offset, float lo, float hi, bool quads) {
  const uint64_t counter = counter_offset(offset, device_offset);
  const int64_t groups = (numel + 3) / 4;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Normal4 xi = noise_std != 0.f ? box_muller4(philox_block(seed, counter, static_cast<uint64_t>(g)))
                                        : Normal4{{0.f, 0.f, 0.f, 0.f}};
    const int64_t e0 = 4 * g;
    if (quads && e0 + 4 <= numel) {
      Quad<T> xv = reinterpret_cast<Quad<T>*>(x)[g];
      const Quad<T> gv = reinterpret_cast<const Quad<T>*>(grad)[g];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        xv.v[j] = static_cast<T>(sgld_update(static_cast<float>(xv.v[j]), static_cast<float>(gv.v[j]), step_size,
                                             noise_std, xi.v[j], lo, hi));
      }
      reinterpret_cast<Quad<T>*>(x)[g] = xv;
    } else {
      for (int j = 0; j < 4 && e0 + j < numel; ++j) {
        x[e0 + j] = static_cast<T>(sgld_update(static_cast<float>(x[e0 + j]), static_cast<float>(grad[e0 + j]),
                                               step_size, noise_std, xi.v[j], lo, hi));
      }
    }
  }
}

template <typename T>
__global__ void buffer_draw_kernel(const T* __restrict__ buffer, const int64_t* __restrict__ indices,
                                   T* __restrict__ out, bool* __restrict__ reinit, int64_t rows,
                                   int64_t buffer_rows, int64_t row_numel, float reinit_prob, float low,
                                   float high, uint64_t seed, uint64_t offset,
                                   const int64_t* __restrict__ device_offset) {
  const uint64_t counter = counter_offset(offset, device_offset);
  const int64_t numel = rows * row_numel;
  const int64_t groups = (numel + 3) / 4;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Philox4 words = philox_block(seed, counter, static_cast<uint64_t>(g));
    int64_t row = -1;
    bool fresh = false;
    int64_t src_row = 0;
    for (int j = 0; j < 4 && 4 * g + j < numel; ++j) {
      const int64_t e = 4 * g + j;
      const int64_t r = e / row_numel;
      if (r != row) {
        row = r;
        fresh = row_reinitialised(seed, counter, static_cast<uint64_t>(r), reinit_prob);
        src_row = indices[r];
        CUDA_KERNEL_ASSERT(src_row >= 0 && src_row < buffer_rows);
        if (e % row_numel == 0) reinit[r] = fresh;
      }
      out[e] = fresh ? static_cast<T>(uniform_between(words.v[j], low, high))
                     : buffer[src_row * row_numel + (e - r * row_numel)];
    }
  }
}

const int64_t* device_offset_ptr(const c10::optional<at::Tensor>& device_offset) {
  return device_offset.has_value() ? device_offset->data_ptr<int64_t>() : nullptr;
}

void sgld_step_cuda(at::Tensor x, const at::Tensor& grad, double step_size, double noise_std, int64_t seed,
                    int64_t offset, const c10::optional<at::Tensor>& device_offset,
                    c10::optional<double> clamp_min, c10::optional<double> clamp_max) {
  check_sgld_args(x, grad, device_offset);
  const int64_t numel = x.numel();
  if (numel == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t groups = (numel + 3) / 4;
  GEDI_DISPATCH_SAMPLE_TYPES(x.scalar_type(), "sgld_step_cuda", [&] {
    const bool quads = reinterpret_cast<uintptr_t>(x.data_ptr()) % sizeof(Quad<scalar_t>) == 0 &&
                       reinterpret_cast<uintptr_t>(grad.data_ptr()) % sizeof(Quad<scalar_t>) == 0;
    sgld_step_kernel<scalar_t><<<blocks_for(groups), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), numel, static_cast<float>(step_size),
        static_cast<float>(noise_std), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
        device_offset_ptr(device_offset), clamp_bound(clamp_min, -kInf), clamp_bound(clamp_max, kInf), quads);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> buffer_draw_cuda(const at::Tensor& buffer, const at::Tensor& indices,
                                                    double reinit_prob, double low, double high, int64_t seed,
                                                    int64_t offset,
                                                    const c10::optional<at::Tensor>& device_offset) {
  check_buffer_draw_args(buffer, indices, reinit_prob, low, high, device_offset);
  const c10::cuda::CUDAGuard guard(buffer.device());
  const int64_t rows = indices.size(0);
  const int64_t row_numel = buffer.numel() / buffer.size(0);
  at::Tensor out, reinit;
  std::tie(out, reinit) = allocate_draw_outputs(buffer, indices);
  const int64_t numel = rows * row_numel;
  if (numel == 0) return {out, reinit};
  const at::Tensor idx = indices.contiguous();
  GEDI_DISPATCH_SAMPLE_TYPES(buffer.scalar_type(), "buffer_draw_cuda", [&] {
    buffer_draw_kernel<scalar_t><<<blocks_for((numel + 3) / 4), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        buffer.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), reinit.data_ptr<bool>(),
        rows, buffer.size(0), row_numel, static_cast<float>(reinit_prob), static_cast<float>(low),
        static_cast<float>(high), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
        device_offset_ptr(device_offset));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, reinit};
}

}  // namespace

TORCH_LIBRARY_IMPL(gedi_fast, CUDA, m) {
  m.impl("sgld_step_", &sgld_step_cuda);
  m.impl("buffer_draw", &buffer_draw_cuda);
}

}  // namespace gedi_fast
