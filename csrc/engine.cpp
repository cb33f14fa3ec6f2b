#include "engine.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <ATen/Context.h>

#include <optional>

#include "common.h"
#include "cpu_load.h"
#include "io/export_reader.h"
#include "ops/ops.h"

namespace seq2seq {

namespace {

bool parse_reference_ops(const std::string& ops) {
  check(ops == "device" || ops == "reference", "ops must be device (the device's kernels) or reference (the ATen "
                                               "implementations), not " + ops);
  return ops == "reference";
}

at::Device parse_device(const std::string& name) {
  std::optional<at::Device> device;
  try {
    device = at::Device(name);
  } catch (const c10::Error&) {
  }
  check(device && (device->is_cpu() || device->is_cuda()), "device must be cpu, cuda or cuda:N, not " + name);
  check(!device->is_cuda() || at::hasCUDA(), "device " + name + ": this torch build has no CUDA or sees no GPU; "
                                             "use device cpu");
  return *device;
}

}  // namespace

Engine::Engine(const std::string& export_dir, int64_t threads, const std::string& compute_type, const std::string& ops,
               const std::string& device)
    : compute_type_(parse_compute_type(compute_type)), reference_ops_(parse_reference_ops(ops)) {
  const auto where = parse_device(device);
  {
    const LoadedExport exp = load_export(export_dir);
    build(exp.model_config, exp.weights, threads, where);
  }
#ifdef __GLIBC__
  // The file's tensors and the packing's temporaries, freed now, sit in pieces that glibc
  // keeps for reuse: handing them back leaves the process the model's size (0.2 GB less at
  // OPUS-MT's).
  malloc_trim(0);
#endif
}

Engine::Engine(const std::string& model_config_json, const Weights& weights, int64_t threads,
               const std::string& compute_type, const std::string& ops, const std::string& device)
    : compute_type_(parse_compute_type(compute_type)), reference_ops_(parse_reference_ops(ops)) {
  build(model_config_json, weights, threads, parse_device(device));
}

void Engine::build(const std::string& model_config_json, const Weights& weights, int64_t threads,
                   const at::Device& device) {
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  // float32 means float32 on a GPU too, as the Python reference computes it: no TF32 products.
  if (device.is_cuda()) {
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
  c10::InferenceMode guard;
  model_ = create_model(model_config_json, weights, compute_type_, device);
}

Results Engine::translate(const std::vector<std::vector<int64_t>>& sources, const DecodeOptions& opts,
                          const Abandoned& abandoned) const {
  ReferenceOps reference(reference_ops_);
  std::optional<LoadThreads> threads;
  if (model_->options.device().is_cpu()) threads.emplace();
  return decode(*model_, sources, opts, abandoned);
}

}  // namespace seq2seq
