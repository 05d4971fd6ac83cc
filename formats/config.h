// formats/config.h: the model config as JSON (docs/FLASH.md §5): in a model config file, and in every checkpoint's
// __metadata__.config. Every field is checked, and a bad one is named.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flash.h"
#include "transformer.h"

FlashConfig config_from_json(const nlohmann::json& j);      // missing keys keep the small config's values
nlohmann::json config_to_json(const FlashConfig& c);      // with "arch": "flash", as every arch writes its own
// "" when a and b describe the same model (seq_len aside: it is a training choice, not a shape),
// else a list like "d: 16 vs 32, chunk: 4 vs 8".
std::string config_shape_mismatch(const FlashConfig& a, const FlashConfig& b);

// The baselines (BASELINES.md §6). Keys of the arch only: a key that does not belong to it is an error naming it.
// Missing keys: the small preset's, with BASELINES.md §1's defaults derived from d (H = d/64 where 64 divides d,
// else 1; f = 3d; m = 4h).
TransformerConfig transformer_config_from_json(const nlohmann::json& j);
nlohmann::json transformer_config_to_json(const TransformerConfig& c);  // writes only the arch's keys, arch first
// "" when a and b describe the same model (seq_len aside), else a list like "d: 16 vs 32".
std::string transformer_shape_mismatch(const TransformerConfig& a, const TransformerConfig& b);

// Any arch: the config read with its arch's reader ("arch" picks it, flash when absent) and written back with its
// writer: checked, missing keys filled in, only the arch's keys.
nlohmann::json normalized_model_config(const nlohmann::json& j);
// The presets: tiny, small, base (FLASH), and <arch>-tiny, <arch>-small for transformer++, performer, combiner
// (the small ones matched in parameters to FLASH small, BASELINES.md §5).
const std::vector<std::string>& model_preset_names();
// A preset's config, or a JSON model config file's (normalized).
nlohmann::json load_model_config_json(const std::string& name_or_file);
