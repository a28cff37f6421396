// Placeholder module body; the data pipeline adds the index builders here.
#include <nanobind/nanobind.h>
namespace nb = nanobind;
NB_MODULE(_native, m) {
  m.doc() = "prism_fast native (C++) helpers: data index builders";
  m.def("abi_version", []() { return 1; });
}
