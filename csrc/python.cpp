// seq2seq._C: the engine for Python. translate releases the GIL for the whole call.
#include <torch/extension.h>

#include "engine.h"

namespace py = pybind11;
using namespace seq2seq;

PYBIND11_MODULE(_C, m) {
  m.doc() = "The seq2seq C++ translation engine";
  py::class_<ModelSpec>(m, "ModelSpec")
      .def(py::init<>())
      .def_readwrite("family", &ModelSpec::family)
      .def_readwrite("cell", &ModelSpec::cell)
      .def_readwrite("attention", &ModelSpec::attention)
      .def_readwrite("src_vocab", &ModelSpec::src_vocab)
      .def_readwrite("tgt_vocab", &ModelSpec::tgt_vocab)
      .def_readwrite("emb_dim", &ModelSpec::emb_dim)
      .def_readwrite("hidden", &ModelSpec::hidden)
      .def_readwrite("layers", &ModelSpec::layers)
      .def_readwrite("attention_dim", &ModelSpec::attention_dim)
      .def_readwrite("bidirectional", &ModelSpec::bidirectional)
      .def_readwrite("context_feed", &ModelSpec::context_feed)
      .def_readwrite("input_feed", &ModelSpec::input_feed);
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
      .def_readwrite("return_attention", &DecodeOptions::return_attention);
  py::class_<Hypothesis>(m, "Hypothesis")
      .def_readonly("tokens", &Hypothesis::tokens)
      .def_readonly("score", &Hypothesis::score)
      .def_readonly("log_prob", &Hypothesis::log_prob)
      .def_readonly("attention", &Hypothesis::attention);
  py::class_<Engine>(m, "Engine")
      .def(py::init<ModelSpec, const Weights&, int64_t, const std::string&>(), py::arg("spec"), py::arg("weights"),
           py::arg("threads") = 0, py::arg("compute_type") = "float32")
      .def_property_readonly("compute_type", &Engine::compute_type)
      .def("translate", &Engine::translate, py::arg("sources"), py::arg("options"),
           py::call_guard<py::gil_scoped_release>());
}
