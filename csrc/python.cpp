// seq2seq._C: the engine for Python. translate releases the GIL for the whole call.
#include <torch/extension.h>

#include "common.h"
#include "cpu_load.h"
#include "engine.h"
#include "ops/ops.h"

namespace py = pybind11;
using namespace seq2seq;

namespace seq2seq {
void bind_batcher(py::module& m);  // python_batcher.cpp
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "The seq2seq C++ translation engine";
  py::class_<DecodeOptions>(m, "DecodeOptions")
      .def(py::init<>())
      .def_readwrite("beam_size", &DecodeOptions::beam_size)
      .def_readwrite("n_best", &DecodeOptions::n_best)
      .def_readwrite("length_penalty", &DecodeOptions::length_penalty)
      .def_readwrite("alpha", &DecodeOptions::alpha)
      .def_readwrite("min_length", &DecodeOptions::min_length)
      .def_readwrite("min_length_ratio", &DecodeOptions::min_length_ratio)
      .def_readwrite("max_length", &DecodeOptions::max_length)
      .def_readwrite("max_length_ratio", &DecodeOptions::max_length_ratio)
      .def_readwrite("max_length_extra", &DecodeOptions::max_length_extra)
      .def_readwrite("early_stop", &DecodeOptions::early_stop)
      .def_readwrite("no_repeat_ngram_size", &DecodeOptions::no_repeat_ngram_size)
      .def_readwrite("return_attention", &DecodeOptions::return_attention);
  m.def("validate_options", &validate_options, py::arg("options"),
        "Raises ValueError with seq2seq.config.validate_decoding_options' message for bad options");
  m.attr("MAX_BEAM") = kMaxBeam;
#ifndef SEQ2SEQ_BUILD_ARCH
#define SEQ2SEQ_BUILD_ARCH "native"
#endif
  m.attr("BUILD_ARCH") = SEQ2SEQ_BUILD_ARCH;  // the -march its kernels were compiled for (setup.py)
#ifdef SEQ2SEQ_CUDA
  m.attr("CUDA_KERNELS") = true;  // ops/cuda/ compiled in: CUDA tensors run them
#else
  m.attr("CUDA_KERNELS") = false;  // CUDA tensors, if any, run the ops' ATen implementations
#endif
  // The ATen implementations of the ops (ops/reference.cpp), callable on CPU tensors, where
  // torch.ops.seq2seq.* runs the CPU kernels: tests compare the two.
  auto reference = m.def_submodule("reference", "the ops in ATen operators, as a device without kernels runs them");
  reference.def("attention", &reference::attention);
  reference.def("multi_head_attention", &reference::multi_head_attention);
  reference.def("add_layer_norm", &reference::add_layer_norm);
  reference.def("beam_candidates", [](const at::Tensor& logits, const at::Tensor& row_scores, const at::Tensor& eos_rule,
                                      std::vector<int64_t> banned, int64_t eos, int64_t group, int64_t count) {
    return reference::beam_candidates(logits, row_scores, eos_rule, banned, eos, group, count);
  });
  m.def(
      "dense_kernels",
      [](const std::string& compute_type, int64_t out, int64_t in, const std::vector<int64_t>& rows) {
        c10::InferenceMode guard;
        const Dense dense(at::randn({out, in}), at::randn({out}), parse_compute_type(compute_type));
        std::vector<std::string> names;
        for (int64_t r : rows) names.push_back(dense.kernel(r));
        return names;
      },
      py::arg("compute_type"), py::arg("out"), py::arg("in"), py::arg("rows"),
      "the kernel a layer (out, in) of this compute type takes for each row count, on this CPU and thread count");
  m.def("threads_for_load", &threads_for_load, py::arg("configured"), py::arg("cores"), py::arg("others_busy"),
        "the intra-op threads a CPU decoding call takes: configured, one fewer per core others keep busy");
  m.def("cpu_load", [] {
        const CpuLoad load = cpu_load_now();
        return py::make_tuple(load.cores, load.others_busy);
      }, "(cores this process may use, cores other processes kept busy over the last 200 ms or more)");
  m.def("int8_activation_bits", &int8_activation_bits,
        "8 where the CPU has int8 dot-product instructions (AVX-512 VNNI), else 7: FBGEMM's 16-bit sums");
  py::class_<Hypothesis>(m, "Hypothesis")
      .def_readonly("tokens", &Hypothesis::tokens)
      .def_readonly("score", &Hypothesis::score)
      .def_readonly("log_prob", &Hypothesis::log_prob)
      .def_readonly("attention", &Hypothesis::attention);
  py::class_<Engine>(m, "Engine")
      .def(py::init<const std::string&, int64_t, const std::string&, const std::string&, const std::string&>(),
           py::arg("export_dir"), py::arg("threads") = 0, py::arg("compute_type") = "float32",
           py::arg("ops") = "device", py::arg("device") = "cpu", py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("compute_type", &Engine::compute_type)
      .def_property_readonly("ops", &Engine::ops)
      .def_property_readonly("device", &Engine::device)
      .def_property_readonly("family", [](const Engine& e) { return e.model().family; })
      .def_property_readonly("source_vocabulary", [](const Engine& e) { return e.model().source_vocabulary; })
      .def_property_readonly("target_vocabulary", [](const Engine& e) { return e.model().target_vocabulary; })
      // abandoned: a CPU bool tensor, one flag per sentence, that other threads may set while the
      // search runs; a sentence whose flag is set stops at the next step (decoding.h, Abandoned).
      .def(
          "translate",
          [](const Engine& e, const std::vector<std::vector<int64_t>>& sources, const DecodeOptions& opts,
             std::optional<at::Tensor> abandoned) {
            Abandoned asked;
            if (abandoned) {
              const auto& flags = *abandoned;
              check(flags.device().is_cpu() && flags.scalar_type() == at::kBool && flags.dim() == 1 &&
                        flags.is_contiguous() && flags.size(0) == static_cast<int64_t>(sources.size()),
                    "abandoned must be a contiguous CPU bool tensor with one flag per sentence");
              // Written by Python threads while the search runs: read through a volatile pointer.
              const volatile bool* set = flags.data_ptr<bool>();
              asked = [set](int64_t sentence) { return set[sentence]; };
            }
            return e.translate(sources, opts, asked);
          },
          py::arg("sources"), py::arg("options"), py::arg("abandoned") = std::nullopt,
          py::call_guard<py::gil_scoped_release>());
  bind_batcher(m);
}
