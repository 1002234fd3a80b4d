// The Python extension module fastgenloss._C. Importing it loads this library, whose static
// initializers register the ops (TORCH_LIBRARY in ops.cpp and each backend's
// TORCH_LIBRARY_IMPL); the module itself only reports how it was built.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

#include "fastgenloss/gram_plan.h"
#include "fastgenloss/host_memory.h"
#include "fastgenloss/style_cuda.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastgenloss compiled kernels (ops are registered under torch.ops.fastgenloss)";
  m.def("_gram_cuda_kernel", &fastgenloss::gram_cuda_kernel_enabled,
        "Whether Gram / style forwards on CUDA run the hand-written kernel (else cuBLAS)");
  m.def("_set_gram_cuda_kernel", &fastgenloss::set_gram_cuda_kernel_enabled, py::arg("enabled"),
        "Switch the hand-written CUDA Gram kernel on or off (FASTGENLOSS_GRAM_CUDA_KERNEL=1 at import)");
  m.def("_cpu_huge_pages", &fastgenloss::cpu_huge_pages_enabled,
        "Whether fresh CPU outputs of >= 32 MiB are advised for huge pages (host_memory.h)");
  m.def("_set_cpu_huge_pages", &fastgenloss::set_cpu_huge_pages_enabled, py::arg("enabled"),
        "Switch the huge-page advice for large CPU outputs on or off (FASTGENLOSS_CPU_HUGE_PAGES=0 at import)");
  m.def("_huge_page_min_bytes", []() { return fastgenloss::kHugePageMinBytes; });
  // the CUDA Gram kernel's tile and split arithmetic, for the CPU tests (gram_plan.h)
  m.def("_gram_plan", [](int64_t elem_bytes, int64_t n, int64_t c, int64_t l, int64_t operands,
                         int64_t blocks_wanted) {
    const auto p = fastgenloss::gram_splits(fastgenloss::gram_k_step(elem_bytes), n, c, l,
                                            operands, blocks_wanted);
    return py::make_tuple(p.splits, p.k_per_split);
  });
  m.def("_gram_tile_coords", [](int64_t t, int64_t nt) {
    int64_t i = 0, j = 0;
    fastgenloss::gram_tile_coords(t, nt, &i, &j);
    return py::make_tuple(i, j);
  });
  m.def("_gram_tile_index", &fastgenloss::gram_tile_index);
  // the float32 kernel's TF32 rounding and three-part split, for the CPU tests (gram_plan.h)
  m.def("_tf32_round", [](float v) { return fastgenloss::gram_tf32_round(v); });
  m.def("_tf32_split3", [](float v) {
    float hi = 0.0f, mid = 0.0f, lo = 0.0f;
    fastgenloss::gram_tf32_split3(v, &hi, &mid, &lo);
    return py::make_tuple(hi, mid, lo);
  });
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
