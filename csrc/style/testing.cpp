// The CUDA Gram kernel's tile and split arithmetic and its float32 TF32 rounding (gram_plan.h),
// exposed to the CPU tests as fastgenloss._C._testing.* (core/python_hooks.h).
#include "core/python_hooks.h"
#include "style/gram_plan.h"

namespace py = pybind11;

FGL_TEST_HOOKS(style_test_hooks) {
  m.def("gram_plan", [](int64_t elem_bytes, int64_t n, int64_t c, int64_t l, int64_t operands,
                        int64_t blocks_wanted) {
    const auto p = fastgenloss::gram_splits(fastgenloss::gram_k_step(elem_bytes), n, c, l,
                                            operands, blocks_wanted);
    return py::make_tuple(p.splits, p.k_per_split);
  });
  m.def("gram_tile_coords", [](int64_t t, int64_t nt) {
    int64_t i = 0, j = 0;
    fastgenloss::gram_tile_coords(t, nt, &i, &j);
    return py::make_tuple(i, j);
  });
  m.def("gram_tile_index", [](int64_t ti, int64_t tj, int64_t nt) {
    return fastgenloss::gram_tile_index(ti, tj, nt);
  });
  m.def("tf32_round", [](float v) { return fastgenloss::gram_tf32_round(v); });
  m.def("tf32_split3", [](float v) {
    float hi = 0.0f, mid = 0.0f, lo = 0.0f;
    fastgenloss::gram_tf32_split3(v, &hi, &mid, &lo);
    return py::make_tuple(hi, mid, lo);
  });
}
