// Schemas of the gedi_fast operator library and the Python module `gedi_fast._C` that loads them.
//
// Builds without CUDA kernels register a CUDA kernel that raises a clear error, so a CUDA tensor
// never meets the dispatcher's generic "could not run" message.
#include <Python.h>
#include <torch/library.h>

#include "checks.h"

namespace gedi_fast {

TORCH_LIBRARY(gedi_fast, m) {
  m.set_python_module("gedi_fast.ops.sgld");  // holds the fake (meta) implementations
  m.def(
      "sgld_step_(Tensor(a!) x, Tensor grad, float step_size, float noise_std, int seed, int offset, "
      "Tensor? device_offset=None, float? clamp_min=None, float? clamp_max=None) -> ()");
  m.def(
      "buffer_draw(Tensor buffer, Tensor indices, float reinit_prob, float low, float high, int seed, "
      "int offset, Tensor? device_offset=None) -> (Tensor, Tensor)");
}

#ifndef GEDI_FAST_WITH_CUDA
namespace {
[[noreturn]] void no_cuda_kernels() {
  TORCH_CHECK(false,
              "gedi_fast was built without CUDA kernels; reinstall on a machine with the CUDA toolkit and "
              "a CUDA build of torch (GEDI_FAST_FORCE_CUDA=1 makes the build fail instead of skipping)");
}
void sgld_step_no_cuda(at::Tensor, const at::Tensor&, double, double, int64_t, int64_t,
                       const c10::optional<at::Tensor>&, c10::optional<double>, c10::optional<double>) {
  no_cuda_kernels();
}
std::tuple<at::Tensor, at::Tensor> buffer_draw_no_cuda(const at::Tensor&, const at::Tensor&, double, double,
                                                       double, int64_t, int64_t,
                                                       const c10::optional<at::Tensor>&) {
  no_cuda_kernels();
}
}  // namespace

TORCH_LIBRARY_IMPL(gedi_fast, CUDA, m) {
  m.impl("sgld_step_", &sgld_step_no_cuda);
  m.impl("buffer_draw", &buffer_draw_no_cuda);
}
#endif

}  // namespace gedi_fast

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "gedi_fast operator library", -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#ifdef GEDI_FAST_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(m, "WITH_CUDA", with_cuda) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
}
