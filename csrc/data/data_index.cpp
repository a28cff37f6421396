// Index builders of the data pipeline (see data_index.h). Tie-breaking and float arithmetic follow the
// Python twins exactly; this file is compiled with -ffp-contract=off so no FMA changes a rounding.
#include "data_index.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <stdexcept>
#include <utility>

namespace prism_data {

void build_blended_index(const double* weights, int64_t num_sources, int64_t num_samples, int16_t* source,
                         int64_t* source_sample) {
  // Tijdeman's chairman assignment (see blended_index in prism_fast/ops/data_index.py): earliest deadline
  // first over the released sources keeps |count_j - w_j n| <= 1 - delta after every prefix.
  std::vector<int64_t> counts(num_sources, 0);
  const double delta = num_sources > 1 ? 1.0 / static_cast<double>(2 * num_sources - 2) : 0.5;
  for (int64_t i = 0; i < num_samples; ++i) {
    const double n = static_cast<double>(i + 1);
    int64_t best = -1;
    double best_deadline = 0.0;
    for (int64_t j = 0; j < num_sources; ++j) {
      if (weights[j] > 0.0 && weights[j] * n - static_cast<double>(counts[j]) >= delta) {
        const double deadline = (static_cast<double>(counts[j] + 1) - delta) / weights[j];
        if (best < 0 || deadline < best_deadline) {
          best = j;
          best_deadline = deadline;
        }
      }
    }
    if (best < 0) {  // only reachable through float rounding: largest deficit (Megatron's rule)
      best = 0;
      double best_err = weights[0] * n - static_cast<double>(counts[0]);
      for (int64_t j = 1; j < num_sources; ++j) {
        const double err = weights[j] * n - static_cast<double>(counts[j]);
        if (err > best_err) {
          best = j;
          best_err = err;
        }
      }
    }
    source[i] = static_cast<int16_t>(best);
    source_sample[i] = counts[best];
    ++counts[best];
  }
}

std::vector<int64_t> build_concat_index(const int64_t* doc_lens, int64_t num_docs, int64_t seq_len) {
  int64_t total = 0;
  for (int64_t d = 0; d < num_docs; ++d) total += doc_lens[d];
  const int64_t num_rows = total / seq_len;
  std::vector<int64_t> starts(2 * (num_rows + 1), 0);
  int64_t doc = 0, off = 0;
  for (int64_t r = 1; r <= num_rows; ++r) {
    int64_t need = seq_len;
    while (need > 0) {
      const int64_t take = doc_lens[doc] - off;
      if (take > need) {
        off += need;
        need = 0;
      } else {
        need -= take;
        ++doc;
        off = 0;
      }
    }
    starts[2 * r] = doc;
    starts[2 * r + 1] = off;
  }
  return starts;
}

BfdResult build_bfd_index(const int64_t* doc_lens, int64_t num_docs, int64_t seq_len, int64_t overlap) {
  if (seq_len < 1 || overlap < 0 || overlap >= seq_len) throw std::invalid_argument("bad seq_len/overlap");
  struct Item {
    int64_t doc, start, len;
  };
  std::vector<Item> items;
  items.reserve(num_docs);
  const int64_t stride = seq_len - overlap;
  for (int64_t d = 0; d < num_docs; ++d) {
    const int64_t n = doc_lens[d];
    if (n <= seq_len) {
      items.push_back({d, 0, n});
      continue;
    }
    for (int64_t s = 0;; s += stride) {
      if (s + seq_len >= n) {
        items.push_back({d, s, n - s});
        break;
      }
      items.push_back({d, s, seq_len});
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.len > b.len; });

  // Open bins keyed by (free space, bin id): lower_bound gives the smallest sufficient free space, oldest bin.
  std::set<std::pair<int64_t, int64_t>> open;
  std::vector<int64_t> bin_free;
  std::vector<int64_t> item_bin(items.size());
  for (size_t k = 0; k < items.size(); ++k) {
    const int64_t n = items[k].len;
    auto it = open.lower_bound({n, INT64_MIN});
    int64_t b;
    if (it == open.end()) {
      b = static_cast<int64_t>(bin_free.size());
      bin_free.push_back(seq_len);
    } else {
      b = it->second;
      open.erase(it);
    }
    item_bin[k] = b;
    bin_free[b] -= n;
    if (bin_free[b] > 0) open.insert({bin_free[b], b});
  }
  // Group segments by bin, keeping placement order inside each bin (counting sort).
  const int64_t num_bins = static_cast<int64_t>(bin_free.size());
  BfdResult res;
  res.bin_ptr.assign(num_bins + 1, 0);
  for (size_t k = 0; k < items.size(); ++k) ++res.bin_ptr[item_bin[k] + 1];
  for (int64_t b = 0; b < num_bins; ++b) res.bin_ptr[b + 1] += res.bin_ptr[b];
  std::vector<int64_t> cursor(res.bin_ptr.begin(), res.bin_ptr.end() - 1);
  res.segments.resize(3 * items.size());
  for (size_t k = 0; k < items.size(); ++k) {
    const int64_t pos = cursor[item_bin[k]]++;
    res.segments[3 * pos] = items[k].doc;
    res.segments[3 * pos + 1] = items[k].start;
    res.segments[3 * pos + 2] = items[k].len;
  }
  return res;
}

}  // namespace prism_data
