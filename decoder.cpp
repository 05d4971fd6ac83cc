// decoder.cpp: see decoder.h.
#include "decoder.h"

#include "decode.h"
#include "decode_baselines.h"
#include "formats/checkpoint.h"
#include "formats/config.h"

namespace {

// FLASH (decode.h) and the baselines (decode_baselines.h) have the same decoder verbs, overloaded on the model.
template <typename ModelT, typename StateT>
struct CachedDecoder : TextDecoder {
    ModelT model;
    StateT state;
    template <typename Config>
    explicit CachedDecoder(const Config& cfg) : model(cfg) {}
    int vocab_size() const override { return model.cfg.vocab_size; }
    void prefill(const int* tokens, int64_t n, float* logits) override {
        decode_prefill(model, state, tokens, n, logits);
        release(model);
    }
    void step(int token, float* logits) override { decode_step(model, state, token, logits); }
    size_t cache_bytes() const override { return state.cache_bytes(); }
    // Generation needs only the cache, not the prefill forward's buffers.
    static void release(FlashModel<float>& m) { m.release_activations(); }
    static void release(TransformerModel<float>&) {}  // (no release_activations yet: the prompt's are kept)
};
using FlashDecoder = CachedDecoder<FlashModel<float>, DecodeState<float>>;
using BaselineDecoder = CachedDecoder<TransformerModel<float>, BaselineDecodeState<float>>;

// The one place a decoder is picked: by the config's arch. `load` fills the new decoder's weights.
template <typename Load>
std::unique_ptr<TextDecoder> make_decoder(const nlohmann::json& config, Load load) {
    if (model_arch(config) == "flash") {
        auto dec = std::make_unique<FlashDecoder>(config_from_json(config));
        load(dec->model);
        decode_init(dec->state, dec->model);  // refuses a non-causal model
        return dec;
    }
    auto dec = std::make_unique<BaselineDecoder>(transformer_config_from_json(config));  // refuses an unknown arch
    load(dec->model);
    decode_init(dec->state, dec->model);  // refuses a non-causal model
    return dec;
}

}  // namespace

std::unique_ptr<TextDecoder> make_text_decoder(const Model<float>& model) {
    return make_decoder(model.config_json(),
                        [&](auto& m) { model.copy_to_host(ModelBuffer::params, m.params.data()); });
}

std::unique_ptr<TextDecoder> open_text_decoder(const std::string& path) {
    const SafeTensorsFile file = safetensors_read(path);
    return make_decoder(checkpoint_model_config(file, path),
                        [&](auto& m) { load_param_tensors(m, m.params, file, "", path); });
}
