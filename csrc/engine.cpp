#include "engine.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include "io/export_reader.h"

namespace seq2seq {

Engine::Engine(const std::string& export_dir, int64_t threads, const std::string& compute_type)
    : compute_type_(parse_compute_type(compute_type)) {
  const LoadedExport exp = load_export(export_dir);
  build(exp.model_config, exp.weights, threads);
}

Engine::Engine(const std::string& model_config_json, const Weights& weights, int64_t threads,
               const std::string& compute_type)
    : compute_type_(parse_compute_type(compute_type)) {
  build(model_config_json, weights, threads);
}

void Engine::build(const std::string& model_config_json, const Weights& weights, int64_t threads) {
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  c10::InferenceMode guard;
  model_ = create_model(model_config_json, weights, compute_type_);
}

Results Engine::translate(const std::vector<std::vector<int64_t>>& sources, const DecodeOptions& opts,
                          const Abandoned& abandoned) const {
  return decode(*model_, sources, opts, abandoned);
}

}  // namespace seq2seq
