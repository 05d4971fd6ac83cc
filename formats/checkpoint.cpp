// formats/checkpoint.cpp: weights and checkpoint files. Read formats/checkpoint.h first.
#include "formats/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "formats/config.h"
#include "formats/json_file.h"
#include "value_check.h"

using json = nlohmann::json;
namespace fs = std::filesystem;

json checkpoint_model_config(const SafeTensorsFile& f, const std::string& path) {
    auto it = f.metadata.find("config");
    FLASH_CHECK(it != f.metadata.end(), "'" << path << "' has no model config in its __metadata__",
                "it was not written by this program; FLASH.md section 7 says what a checkpoint holds");
    return parse_json(it->second, "the config in the __metadata__ of '" + path + "'", "the file is corrupt");
}

FlashConfig checkpoint_config(const SafeTensorsFile& f, const std::string& path) {
    const json j = checkpoint_model_config(f, path);
    try {
        return config_from_json(j);
    } catch (const flash_error& ex) {
        FLASH_FAIL("'" << path << "' holds a bad config: " << ex.what(), "the file is corrupt");
    }
}

// How the config in f differs from m's ("" if it has m's shape).
template <typename Real>
static std::string shape_mismatch(const Model<Real>& m, const SafeTensorsFile& f, const std::string& path) {
    const json j = checkpoint_model_config(f, path);
    try {
        return m.shape_mismatch(j);
    } catch (const flash_error& ex) {
        FLASH_FAIL("'" << path << "' holds a bad config: " << ex.what(), "the file is corrupt");
    }
}

// A host copy of one of m's flat buffers.
template <typename Real>
static std::vector<Real> host_buffer(const Model<Real>& m, ModelBuffer which) {
    std::vector<Real> buf(m.param_count());
    m.copy_to_host(which, buf.data());
    return buf;
}

template <typename Real>
std::vector<SafeTensor> param_tensors(const Model<Real>& m, const std::vector<Real>& buf,
                                      const std::string& prefix, const std::string& dtype, bool trained_only) {
    std::vector<SafeTensor> out;
    for (const TensorSpec& spec : m.tensor_specs())
        if (spec.trained || !trained_only)
            out.push_back(make_tensor(prefix + spec.name, spec.shape, buf.data() + spec.offset, dtype));
    return out;
}

template <typename Real>
void load_param_tensors(const Model<Real>& m, std::vector<Real>& buf, const SafeTensorsFile& f,
                        const std::string& prefix, const std::string& path, bool trained_only) {
    for (const TensorSpec& spec : m.tensor_specs()) {
        if (!spec.trained && trained_only) continue;  // its buffer entries stay zero
        const SafeTensor* t = f.find(prefix + spec.name);
        FLASH_CHECK(t, "'" << path << "' has no tensor '" << prefix + spec.name << "'",
                    (spec.trained ? "the file belongs to another model or was not written by this program"
                                  : "this tensor is drawn at initialisation and never trained, so it cannot be "
                                    "redrawn: use a file that carries it"));
        read_tensor(*t, spec.shape, buf.data() + spec.offset, path);
    }
    // Every architecture: no NaN or infinite weight or moment, no negative second moment.
    check_loaded_values(m.tensor_specs(), buf, prefix, path, /*nonnegative=*/prefix == "adam_v.");
}

template <typename Real>
void save_weights(const std::string& path, const Model<Real>& m) {
    safetensors_write(path, param_tensors(m, host_buffer(m, ModelBuffer::params), "", "F32"),
                      {{"config", m.config_json().dump()}});
}

template <typename Real>
void load_weights(const std::string& path, Model<Real>& m) {
    SafeTensorsFile f = safetensors_read(path);
    const std::string diff = shape_mismatch(m, f, path);
    FLASH_CHECK(diff.empty(), "'" << path << "' holds a model of another shape (file vs this model: " << diff << ")",
                "load it with its own config, or start a fresh model");
    // Read into a copy first, so that a failure leaves the model untouched.
    std::vector<Real> buf(m.param_count());
    load_param_tensors(m, buf, f, "", path);
    m.copy_from_host(ModelBuffer::params, buf.data());
}

static std::string checkpoint_name(int64_t step) {
    char name[64];
    std::snprintf(name, sizeof name, "ckpt_%08lld.safetensors", (long long)step);
    return name;
}

std::string save_checkpoint(const std::string& out_dir, const Model<float>& m, const TrainState& st) {
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    FLASH_CHECK(!ec, "cannot create checkpoint directory '" << out_dir << "': " << ec.message(), "check permissions");
    std::vector<SafeTensor> tensors = param_tensors(m, host_buffer(m, ModelBuffer::params), "", "F32");
    // Moments of the trained tensors only (Ω has none).
    for (SafeTensor& t : param_tensors(m, host_buffer(m, ModelBuffer::adam_m), "adam_m.", "F32", true))
        tensors.push_back(std::move(t));
    for (SafeTensor& t : param_tensors(m, host_buffer(m, ModelBuffer::adam_v), "adam_v.", "F32", true))
        tensors.push_back(std::move(t));
    json state = {{"step", st.step}, {"loader_rng", st.loader_rng}, {"loader_batches", st.loader_batches},
                  {"objective", st.objective}, {"ranks", st.ranks}};
    const std::string path = (fs::path(out_dir) / checkpoint_name(st.step)).string();
    safetensors_write(path, tensors,
                      {{"config", m.config_json().dump()}, {"train_state", state.dump()},
                       {"kind", m.arch() + " checkpoint"}});
    return path;
}

TrainState load_checkpoint(const std::string& path, Model<float>& m) {
    SafeTensorsFile f = safetensors_read(path);
    const std::string diff = shape_mismatch(m, f, path);
    FLASH_CHECK(diff.empty(), "checkpoint '" << path << "' holds a model of another shape (checkpoint vs options: "
                                             << diff << ")",
                "resume with the options it was trained with, or use another --out-dir for a new model");
    auto it = f.metadata.find("train_state");
    FLASH_CHECK(it != f.metadata.end(), "'" << path << "' has no train_state in its metadata",
                "it holds weights only; it cannot be resumed from");
    TrainState st;
    const json j = parse_json(it->second, "the train_state of '" + path + "'", "the file is corrupt");
    try {
        st.step = j.at("step").get<int64_t>();
        st.loader_rng = j.at("loader_rng").get<uint64_t>();
        st.loader_batches = j.at("loader_batches").get<uint64_t>();
        if (j.contains("objective")) st.objective = j.at("objective").get<std::string>();  // older ones: ar
        st.ranks = j.value("ranks", 1);  // checkpoints from before data-parallel training: one process
    } catch (const json::exception& ex) {
        FLASH_FAIL("'" << path << "' has a bad train_state: " << ex.what(), "the file is corrupt");
    }
    std::vector<float> params(m.param_count()), mom1(m.param_count()), mom2(m.param_count());
    load_param_tensors(m, params, f, "", path);
    load_param_tensors(m, mom1, f, "adam_m.", path, true);
    load_param_tensors(m, mom2, f, "adam_v.", path, true);
    // Only now, with everything read and checked, does the model change.
    m.copy_from_host(ModelBuffer::params, params.data());
    m.copy_from_host(ModelBuffer::adam_m, mom1.data());
    m.copy_from_host(ModelBuffer::adam_v, mom2.data());
    return st;
}

static std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& out_dir) {
    std::vector<std::pair<int64_t, std::string>> found;
    std::error_code ec;
    if (!fs::is_directory(out_dir, ec)) return found;
    for (const auto& entry : fs::directory_iterator(out_dir, ec)) {
        const std::string name = entry.path().filename().string();
        long long step;
        char tail[32];
        if (std::sscanf(name.c_str(), "ckpt_%lld.%31s", &step, tail) == 2 && std::string(tail) == "safetensors")
            found.push_back({step, entry.path().string()});
    }
    std::sort(found.begin(), found.end());
    return found;
}

std::string latest_checkpoint(const std::string& out_dir) {
    auto found = list_checkpoints(out_dir);
    return found.empty() ? "" : found.back().second;
}

void prune_checkpoints(const std::string& out_dir, int keep) {
    auto found = list_checkpoints(out_dir);
    for (size_t i = 0; i + keep < found.size(); i++) std::remove(found[i].second.c_str());
}

#define INSTANTIATE(fn)                       \
    template decltype(fn<float>) fn<float>;   \
    template decltype(fn<double>) fn<double>;
INSTANTIATE(param_tensors)
INSTANTIATE(load_param_tensors)
INSTANTIATE(save_weights)
INSTANTIATE(load_weights)
