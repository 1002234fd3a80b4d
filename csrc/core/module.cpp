// The Python extension module fastgenloss._C. Importing it loads this library, whose static
// initializers register the ops: the namespace below, each family's schemas
// (TORCH_LIBRARY_FRAGMENT in csrc/<family>/ops.cpp) and kernels (TORCH_LIBRARY_IMPL beside
// them). The module itself reports how it was built, holds the runtime switches
// (fastgenloss/config.py sets them) and, in _C._testing, the families' test hooks.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "core/config.h"
#include "core/host_memory.h"
#include "core/python_hooks.h"

namespace py = pybind11;

// The op namespace; every family adds its ops with TORCH_LIBRARY_FRAGMENT.
TORCH_LIBRARY(fastgenloss, m) {}

namespace fastgenloss {

namespace {
std::vector<TestHooks>& test_hooks() {
  static std::vector<TestHooks> hooks;
  return hooks;
}

Switch switch_named(const std::string& name) {
  for (int i = 0; switch_name(i) != nullptr; ++i) {
    if (name == switch_name(i)) return static_cast<Switch>(i);
  }
  throw py::key_error("fastgenloss: no runtime switch named '" + name + "'");
}
}  // namespace

bool register_test_hooks(TestHooks hooks) {
  test_hooks().push_back(hooks);
  return true;
}

void install_test_hooks(py::module_& m) {
  for (const TestHooks hooks : test_hooks()) hooks(m);
}

}  // namespace fastgenloss

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastgenloss compiled kernels (ops are registered under torch.ops.fastgenloss)";
  m.def("_switch_names", []() {
    py::list names;
    for (int i = 0; fastgenloss::switch_name(i) != nullptr; ++i) names.append(fastgenloss::switch_name(i));
    return names;
  });
  m.def("_get_switch", [](const std::string& name) {
    return fastgenloss::get_switch(fastgenloss::switch_named(name));
  });
  m.def("_set_switch", [](const std::string& name, int64_t value) {
    fastgenloss::set_switch(fastgenloss::switch_named(name), value);
  });
  py::module_ testing = m.def_submodule("_testing", "test hooks of the compiled part (private)");
  testing.def("huge_page_min_bytes", []() { return fastgenloss::kHugePageMinBytes; });
  fastgenloss::install_test_hooks(testing);
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
