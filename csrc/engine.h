// The C++ translation engine: a model built from an export (models/factory.cpp) and the
// search of decoding.h over it. One Engine may be shared by many threads.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "decoding.h"
#include "layers/dense.h"
#include "models/model.h"

namespace seq2seq {

class Engine {
 public:
  // An export directory (seq2seq export): config.json and model.safetensors.
  // threads > 0 sets the intra-op thread count of the process; on the CPU a call takes
  // fewer while other processes keep cores busy (cpu_load.h, LoadThreads). compute_type "float32"
  // decodes with the weights as given (the parity reference); "int8" quantizes the decoder's
  // matrices per output channel, "bfloat16" multiplies them in bfloat16.
  // ops "device" runs the device's kernels (ops/cpu/ on the CPU); "reference" the ATen
  // implementations of ops/reference.cpp (ReferenceOps), which give the same tokens.
  // device "cpu", "cuda" or "cuda:N": the weights move there once and the search runs there.
  explicit Engine(const std::string& export_dir, int64_t threads = 0, const std::string& compute_type = "float32",
                  const std::string& ops = "device", const std::string& device = "cpu");
  // A config.json "model" object (JSON text) and its state_dict tensors.
  Engine(const std::string& model_config_json, const Weights& weights, int64_t threads = 0,
         const std::string& compute_type = "float32", const std::string& ops = "device",
         const std::string& device = "cpu");

  // Sources are token ids without the appended <eos>; every sentence must be non-empty.
  // Sentences found abandoned between steps stop there with an empty result (decoding.h).
  Results translate(const std::vector<std::vector<int64_t>>& sources, const DecodeOptions& opts,
                    const Abandoned& abandoned = {}) const;

  const Model& model() const { return *model_; }
  std::string compute_type() const { return compute_type_name(compute_type_); }
  std::string ops() const { return reference_ops_ ? "reference" : "device"; }
  std::string device() const { return model_->options.device().str(); }

 private:
  void build(const std::string& model_config_json, const Weights& weights, int64_t threads, const at::Device& device);

  ComputeType compute_type_;
  bool reference_ops_ = false;
  std::unique_ptr<Model> model_;
};

}  // namespace seq2seq
