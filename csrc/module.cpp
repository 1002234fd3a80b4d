// The Python extension module fastgenloss._C. Importing it loads this library, whose static
// initializers register the ops (TORCH_LIBRARY in ops.cpp and each backend's
// TORCH_LIBRARY_IMPL); the module itself only reports how it was built.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastgenloss compiled kernels (ops are registered under torch.ops.fastgenloss)";
  m.def("_native_build_info", []() {
    py::dict d;
    d["version"] = FGL_VERSION;
    d["torch_version"] = FGL_TORCH_VERSION;
#ifdef FGL_WITH_CUDA
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
    d["cuda_archs"] = FGL_CUDA_ARCHS;
#if AT_PARALLEL_OPENMP
    d["parallel_backend"] = "OpenMP";
#else
    d["parallel_backend"] = "native thread pool";
#endif
#ifdef FGL_OPENMP
    d["openmp_compiled"] = true;
#else
    d["openmp_compiled"] = false;
#endif
    d["cxx_standard"] = static_cast<long>(__cplusplus);
    return d;
  });
}
