// Test hooks of the compiled part: plain C++ helpers (a kernel's tile arithmetic, a rounding)
// that the CPU tests call directly. Each family registers its hooks beside the code they expose
// with FGL_TEST_HOOKS; core/module.cpp puts them all in the private module fastgenloss._C._testing,
// apart from the package's API.
#pragma once

#include <pybind11/pybind11.h>

namespace fastgenloss {

using TestHooks = void (*)(pybind11::module_& m);

// Adds hooks to the list core/module.cpp installs at import; returns true (for a static).
bool register_test_hooks(TestHooks hooks);
void install_test_hooks(pybind11::module_& m);

}  // namespace fastgenloss

#define FGL_TEST_HOOKS(name)                                                              \
  static void name(pybind11::module_& m);                                                 \
  [[maybe_unused]] static const bool name##_registered = ::fastgenloss::register_test_hooks(&name); \
  static void name(pybind11::module_& m)
