// Torch-free C++ core of the prism_fast data pipeline: blended (mixture) index, concat-and-chunk index and
// best-fit-decreasing packing index. Plain std::vector in/out; the nanobind module converts to numpy.
// Each function has a pure-Python twin in prism_fast/ops/data_index.py that must return identical results.
#pragma once
#include <cstdint>
#include <vector>

namespace prism_data {

// Exact blending (Tijdeman chairman assignment, earliest deadline first). weights: normalized, size S. Fills source (int16) and source_sample (int64),
// both of size num_samples.
void build_blended_index(const double* weights, int64_t num_sources, int64_t num_samples, int16_t* source,
                         int64_t* source_sample);

// Row starts (doc, offset) for concat-and-chunk rows of seq_len tokens: (num_rows + 1) x 2, row-major.
std::vector<int64_t> build_concat_index(const int64_t* doc_lens, int64_t num_docs, int64_t seq_len);

struct BfdResult {
  std::vector<int64_t> bin_ptr;   // [num_bins + 1]
  std::vector<int64_t> segments;  // [num_segments * 3]: (doc, start, length)
};
BfdResult build_bfd_index(const int64_t* doc_lens, int64_t num_docs, int64_t seq_len, int64_t overlap);

}  // namespace prism_data
