// nanobind bindings of the data-index builders (data_index.h) as prism_fast._native. numpy arrays in and out,
// no torch. The GIL is released while an index is built, so a loader thread can build while training runs.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstring>
#include <string>
#include <vector>

#include "data_index.h"

namespace nb = nanobind;
using CArr1D_f64 = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using CArr1D_i64 = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

template <typename T>
static nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v, std::initializer_list<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(heap->data(), shape, owner);
}

NB_MODULE(_native, m) {
  m.doc() = "prism_fast native (C++) helpers: data index builders (twins in prism_fast/ops/data_index.py)";
  m.def("abi_version", []() { return 2; });

  m.def(
      "build_blended_index",
      [](CArr1D_f64 weights, int64_t num_samples) {
        if (weights.shape(0) < 1) throw nb::value_error("weights: need at least one source");
        if (num_samples < 0) throw nb::value_error("num_samples must be >= 0");
        std::vector<int16_t> src(num_samples);
        std::vector<int64_t> sample(num_samples);
        {
          nb::gil_scoped_release release;
          prism_data::build_blended_index(weights.data(), weights.shape(0), num_samples, src.data(),
                                          sample.data());
        }
        const size_t n = static_cast<size_t>(num_samples);
        return nb::make_tuple(to_numpy(std::move(src), {n}), to_numpy(std::move(sample), {n}));
      },
      nb::arg("weights"), nb::arg("num_samples"),
      "weights float64 [S] (normalized) -> (source int16 [N], source_sample int64 [N])");

  m.def(
      "build_concat_index",
      [](CArr1D_i64 doc_lens, int64_t seq_len) {
        if (seq_len < 1) throw nb::value_error("seq_len must be >= 1");
        std::vector<int64_t> starts;
        {
          nb::gil_scoped_release release;
          starts = prism_data::build_concat_index(doc_lens.data(), doc_lens.shape(0), seq_len);
        }
        const size_t rows = starts.size() / 2;
        return to_numpy(std::move(starts), {rows, 2});
      },
      nb::arg("doc_lens"), nb::arg("seq_len"), "doc_lens int64 [D] -> row starts int64 [R + 1, 2]");

  m.def(
      "build_bfd_index",
      [](CArr1D_i64 doc_lens, int64_t seq_len, int64_t overlap) {
        if (seq_len < 1 || overlap < 0 || overlap >= seq_len)
          throw nb::value_error("need seq_len >= 1 and 0 <= overlap < seq_len");
        prism_data::BfdResult res;
        {
          nb::gil_scoped_release release;
          res = prism_data::build_bfd_index(doc_lens.data(), doc_lens.shape(0), seq_len, overlap);
        }
        const size_t bins = res.bin_ptr.size(), segs = res.segments.size() / 3;
        return nb::make_tuple(to_numpy(std::move(res.bin_ptr), {bins}), to_numpy(std::move(res.segments), {segs, 3}));
      },
      nb::arg("doc_lens"), nb::arg("seq_len"), nb::arg("overlap"),
      "doc_lens int64 [D] -> (bin_ptr int64 [B + 1], segments int64 [S, 3] of (doc, start, length))");
}
