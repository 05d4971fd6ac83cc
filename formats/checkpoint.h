// formats/checkpoint.h: what this project's safetensors files hold (docs/FLASH.md §7), for any Model (model.h):
//   - weights: every parameter under its name (float32), and the model config under __metadata__.config;
//   - a checkpoint: the weights, the AdamW moments (adam_m.<name>, adam_v.<name>) and __metadata__.train_state
//     (step, data-loader position and objective), written atomically as out_dir/ckpt_<step>.safetensors.
// A file is read and checked whole before a model changes: a failure leaves the model as it was.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flash.h"
#include "formats/safetensors.h"
#include "model.h"

// The model config stored in a file's metadata, as JSON; a clear error if it is missing or not JSON.
nlohmann::json checkpoint_model_config(const SafeTensorsFile& f, const std::string& path);
// The same, as a FLASH config (checked field by field).
FlashConfig checkpoint_config(const SafeTensorsFile& f, const std::string& path);

// Parameter tensors under their §7 (BASELINES.md §6) names (prefix "" for weights, "grad." for gradients, ...), from
// a host buffer in the model's tensor_specs layout; trained_only leaves out the tensors that are not trained (Ω),
// which have no gradient and no moments.
template <typename Real> std::vector<SafeTensor> param_tensors(const Model<Real>& m, const std::vector<Real>& buf,
                                                               const std::string& prefix, const std::string& dtype,
                                                               bool trained_only = false);
// Fills buf from the tensors prefix + name of f, refusing missing tensors (Ω above all: it cannot be redrawn) or
// wrong shapes.
template <typename Real> void load_param_tensors(const Model<Real>& m, std::vector<Real>& buf,
                                                 const SafeTensorsFile& f, const std::string& prefix,
                                                 const std::string& path, bool trained_only = false);

template <typename Real> void save_weights(const std::string& path, const Model<Real>& m);
// Loads weights into m; the file's config must have m's shape.
template <typename Real> void load_weights(const std::string& path, Model<Real>& m);

// What a checkpoint holds beyond the weights and moments: where training stands.
struct TrainState {
    int64_t step = 0;            // steps done
    uint64_t loader_rng = 0;     // train data loader position
    uint64_t loader_batches = 0;
    std::string objective = "ar";  // the training objective (data/mlm.h); a checkpoint without one is from ar
    int ranks = 1;               // data-parallel ranks that trained it (dist.h)
};
// Written atomically (temporary file, flush, rename): out_dir/ckpt_<step>.safetensors. Returns the path.
std::string save_checkpoint(const std::string& out_dir, const Model<float>& m, const TrainState& st);
// Loads a checkpoint into m (whose shape must match: else an error naming the mismatch).
TrainState load_checkpoint(const std::string& path, Model<float>& m);
// The newest out_dir/ckpt_*.safetensors ("" if none), and removal of all but the newest `keep`.
std::string latest_checkpoint(const std::string& out_dir);
void prune_checkpoints(const std::string& out_dir, int keep);
