// formats/config.h: the model config as JSON (docs/FLASH.md §5): in a model config file, and in every checkpoint's
// __metadata__.config. Every field is checked, and a bad one is named.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "flash.h"

FlashConfig config_from_json(const nlohmann::json& j);      // missing keys keep the small config's values
nlohmann::json config_to_json(const FlashConfig& c);
// "" when a and b describe the same model (seq_len aside: it is a training choice, not a shape),
// else a list like "d: 16 vs 32, chunk: 4 vs 8".
std::string config_shape_mismatch(const FlashConfig& a, const FlashConfig& b);
// tiny | small | base (config_preset), or a JSON model config file.
FlashConfig load_model_config(const std::string& name_or_file);
