// flash.h: the FLASH language model (Hua et al. 2022, "Transformer Quality in Linear Time"), CPU reference.
//
// The method is defined in ../shared/FLASH.md; section numbers below (§1, §2, ...) refer to it.
// Everything here is shared by the CPU reference (flash.cpp), the tests and the programs:
//   - FlashConfig: the model shape (§5), read from and written to JSON with every field checked;
//   - the parameter layout (§7): one flat buffer, viewed through structs of named pointers;
//   - the ops (§1 forward, §2 backward), templated on the scalar type (float to train, double to check);
//   - FlashModel: forward to the loss, backward to every gradient, AdamW;
//   - safetensors read/write and the model checkpoint / debug-state files.
// Read flash.cpp top to bottom next to this file: every op's shapes are documented there.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common.h"

// ----------------------------------------------------------------------------------------------------
// Configuration (§5)

struct FlashConfig {
    int vocab_size = 4096;   // V
    int d = 256;             // model width
    int e = 512;             // expanded width (paper: 2d)
    int s = 128;             // shared query/key width; even, for RoPE
    int n_layers = 8;        // L
    int chunk = 128;         // C
    int seq_len = 512;       // T used for training; a multiple of C
    bool causal = true;      // false: the non-causal (masked-LM) variant of §1
    double eps = 1e-6;       // scalenorm epsilon
    double rope_base = 10000.0;

    int inner() const { return 2 * e + s; }                  // width of the fused projection: [u | v | z]
    int n_rel_bias() const { return causal ? chunk : 2 * chunk - 1; }
};

FlashConfig config_preset(const std::string& name);        // "tiny", "small" or "base" (§5)
void config_validate(const FlashConfig& c);                 // throws, naming the bad field
FlashConfig config_from_json(const nlohmann::json& j);      // missing keys keep the small config's values
nlohmann::json config_to_json(const FlashConfig& c);
// "" when a and b describe the same model (seq_len aside: it is a training choice, not a shape),
// else a list like "d: 16 vs 32, chunk: 4 vs 8".
std::string config_shape_mismatch(const FlashConfig& a, const FlashConfig& b);

// ----------------------------------------------------------------------------------------------------
// Deterministic random numbers: splitmix64 for the stream, Box-Muller for normals. The whole state is one
// uint64 so a checkpoint can save it, and results are the same on every platform (unlike <random>'s
// distributions).

struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed = 0) : state(seed) {}
    uint64_t next_u64() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
    double normal();                                                              // N(0, 1)
    int below(int n) { return (int)(next_u64() % (uint64_t)n); }                  // [0, n), n small
};

// ----------------------------------------------------------------------------------------------------
// Parameters (§7): names, shapes and places in the flat buffer, in checkpoint order.

struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;
    size_t offset = 0;   // in elements, into the flat buffer
    size_t count = 0;    // number of elements
    bool decay = false;  // AdamW weight decay applies (matrices only: not gains, biases, offsets, rel_bias)
};
std::vector<TensorSpec> param_specs(const FlashConfig& c);  // wte, layers.{l}.{norm.g,w_in,...}, norm_f.g
size_t param_count(const FlashConfig& c);

template <typename Real>
struct LayerParams {
    Real* norm_g;    // (1)          scalenorm gain
    Real* w_in;      // (d, 2e+s)    fused input projection
    Real* b_in;      // (2e+s)
    Real* gamma;     // (4, s)       offset-scale gains, rows qq, kq, ql, kl
    Real* beta;      // (4, s)       offset-scale offsets
    Real* rel_bias;  // (C) causal, (2C-1) non-causal
    Real* w_out;     // (e, d)
    Real* b_out;     // (d)
};
template <typename Real>
struct ParamView {
    Real* wte;       // (V, d), tied with the output logits
    std::vector<LayerParams<Real>> layers;
    Real* norm_f_g;  // (1)
};
template <typename Real>
ParamView<Real> view_params(Real* base, const FlashConfig& c);

// ----------------------------------------------------------------------------------------------------
// Activations saved by the forward pass for the backward pass, in one flat buffer. N = B*T rows.

template <typename Real>
struct LayerActs {
    Real* x;       // (N, d)        layer input: the residual stream
    Real* rstd;    // (N)           1 / sqrt(mean(x²) + eps)
    Real* xn;      // (N, d)        scalenorm(x)
    Real* h;       // (N, 2e+s)     xn · W_in + b_in
    Real* act;     // (N, 2e+s)     silu(h) = [u | v | z]
    Real* qq;      // (N, s)        the four offset-scale heads, after RoPE
    Real* kq;
    Real* ql;
    Real* kl;
    Real* relu_s;  // (B, G, C, C)  relu(S) per chunk, 0 where masked; A = relu_s²
    Real* m;       // (B, G, s, e)  M[g], the (exclusive, if causal) prefix sum of P over chunks
    Real* o;       // (N, e)        quad + lin
    Real* gated;   // (N, e)        u ⊙ o
};
template <typename Real>
struct Acts {
    std::vector<LayerActs<Real>> layers;
    Real* x_final;  // (N, d)   output of the last layer
    Real* rstd_f;   // (N)
    Real* xn_f;     // (N, d)
    Real* logits;   // (N, V)
    Real* probs;    // (N, V)   softmax(logits)
    Real* losses;   // (N)      per-position cross-entropy
};
// Gradients with respect to activations: one layer's worth, reused layer after layer.
template <typename Real>
struct GradActs {
    Real* dres;     // (N, d)     gradient of the residual stream at the current layer boundary
    Real* dxn;      // (N, d)
    Real* dh;       // (N, 2e+s)
    Real* dact;     // (N, 2e+s)  [du | dv | dz]
    Real* dqq;      // (N, s)
    Real* dkq;
    Real* dql;
    Real* dkl;
    Real* d_o;      // (N, e)
    Real* dgated;   // (N, e)
    Real* dlogits;  // (N, V)
};

// The two activation buffers for a batch of B rows of T tokens: their sizes in elements, and the views into
// them (in the order of the structs above). Shared by the CPU and GPU models, so both lay memory out alike.
void activation_counts(const FlashConfig& c, int B, int T, size_t* n_act, size_t* n_grad);
template <typename Real>
void view_activations(Acts<Real>& acts, GradActs<Real>& dacts, Real* act_base, Real* grad_base, const FlashConfig& c,
                      int B, int T);

// ----------------------------------------------------------------------------------------------------
// The ops (§1, §2). Argument order: outputs, saved activations, inputs, parameters, sizes.
// Backward passes accumulate (+=) into every d... argument. Shapes are documented in flash.cpp.

template <typename Real> void encoder_forward(Real* x, const int* tokens, const Real* wte, int N, int d);
template <typename Real> void encoder_backward(Real* dwte, const Real* dx, const int* tokens, int N, int d);

template <typename Real> void scalenorm_forward(Real* xn, Real* rstd, const Real* x, const Real* g, int N, int d, double eps);
template <typename Real> void scalenorm_backward(Real* dx, Real* dg, const Real* dxn, const Real* x, const Real* rstd,
                                                 const Real* g, int N, int d);

template <typename Real> void matmul_forward(Real* y, const Real* x, const Real* w, const Real* b, int N, int in, int out);
template <typename Real> void matmul_backward(Real* dx, Real* dw, Real* db, const Real* dy, const Real* x, const Real* w,
                                              int N, int in, int out);

template <typename Real> void silu_forward(Real* y, const Real* x, size_t n);
template <typename Real> void silu_backward(Real* dx, const Real* dy, const Real* x, size_t n);

template <typename Real> void offset_scale_forward(Real* qq, Real* kq, Real* ql, Real* kl, const Real* z, int ldz,
                                                   const Real* gamma, const Real* beta, int N, int s);
template <typename Real> void offset_scale_backward(Real* dz, int lddz, Real* dgamma, Real* dbeta, const Real* dqq,
                                                    const Real* dkq, const Real* dql, const Real* dkl, const Real* z,
                                                    int ldz, const Real* gamma, int N, int s);

// RoPE works in place: rope_forward rotates x by +θ, rope_backward rotates dx by −θ.
// cos_t/sin_t: (T, s/2) tables from rope_tables; row n of x is at position first_pos + (n mod T).
void rope_tables(std::vector<double>& cos_t, std::vector<double>& sin_t, int first_pos, int T, int s, double base);
template <typename Real> void rope_forward(Real* x, const double* cos_t, const double* sin_t, int N, int T, int s);
template <typename Real> void rope_backward(Real* dx, const double* cos_t, const double* sin_t, int N, int T, int s);

template <typename Real> void local_attention_forward(Real* o, Real* relu_s, const Real* qq, const Real* kq, const Real* v,
                                                      int ldv, const Real* rel_bias, int B, int T, int C, int s, int e,
                                                      bool causal);
template <typename Real> void local_attention_backward(Real* dqq, Real* dkq, Real* dv, int lddv, Real* drel_bias,
                                                       const Real* d_o, const Real* relu_s, const Real* qq,
                                                       const Real* kq, const Real* v, int ldv, int B, int T, int C,
                                                       int s, int e, bool causal);

template <typename Real> void global_attention_forward(Real* o, Real* m, const Real* ql, const Real* kl, const Real* v,
                                                       int ldv, int B, int T, int C, int s, int e, bool causal);
template <typename Real> void global_attention_backward(Real* dql, Real* dkl, Real* dv, int lddv, const Real* d_o,
                                                        const Real* m, const Real* ql, const Real* kl, const Real* v,
                                                        int ldv, int B, int T, int C, int s, int e, bool causal);

template <typename Real> void gate_forward(Real* gated, const Real* u, int ldu, const Real* o, int N, int e);
template <typename Real> void gate_backward(Real* du, int lddu, Real* d_o, const Real* dgated, const Real* u, int ldu,
                                            const Real* o, int N, int e);

template <typename Real> void residual_forward(Real* y, const Real* x, size_t n);

template <typename Real> void logits_forward(Real* logits, const Real* xn, const Real* wte, int N, int d, int V);
template <typename Real> void logits_backward(Real* dxn, Real* dwte, const Real* dlogits, const Real* xn, const Real* wte,
                                              int N, int d, int V);

template <typename Real> double crossentropy_forward(Real* losses, Real* probs, const Real* logits, const int* targets,
                                                     int N, int V);
template <typename Real> void crossentropy_backward(Real* dlogits, const Real* probs, const int* targets, int N, int V);

// ----------------------------------------------------------------------------------------------------
// The model

// A batch the model can take: B, T > 0, T a multiple of C, every token and target id in [0, V) (targets may be
// null). Throws naming the first problem. Shared by the CPU and GPU models.
void check_batch(const FlashConfig& cfg, const int* tokens, const int* targets, int B, int T);

struct AdamWConfig {
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

template <typename Real>
struct FlashModel {
    FlashConfig cfg;
    std::vector<TensorSpec> specs;
    std::vector<Real> params, grads, adam_m, adam_v;   // flat, param_count(cfg) each
    ParamView<Real> p, dp;                             // named views of params and grads
    // Batch-dependent state, (re)allocated by forward when B or T change.
    int B = 0, T = 0;
    std::vector<Real> act_buf, grad_act_buf;
    Acts<Real> acts{};
    GradActs<Real> dacts{};
    std::vector<double> rope_cos, rope_sin;            // (T, s/2)
    std::vector<int> tokens, targets;                  // the batch of the last forward
    double loss = 0;                                   // mean loss of the last forward (NaN without targets)

    explicit FlashModel(const FlashConfig& c);
    FlashModel(const FlashModel&) = delete;            // the views point into this object's buffers
    FlashModel& operator=(const FlashModel&) = delete;

    // Paper initialisation (§1); strong = true is the tests' initialisation far from the identity, so that bugs
    // show (§1): γ ~ N(1, 0.5), β, w ~ N(0, 0.5), unit-gain matrices, random biases and gains.
    void init_weights(uint64_t seed, bool strong = false);
    // tokens, targets: (B, T) ids in [0, V); targets may be null (then only logits are computed).
    double forward(const int* tokens, const int* targets, int B, int T);
    void zero_grad();
    void backward();   // after a forward with targets; accumulates into grads
    // One AdamW step (t counts from 1) with decoupled weight decay on the tensors whose spec says decay.
    void adamw_update(double lr, const AdamWConfig& opt, int64_t t);
    double grad_norm() const;   // global L2 norm of grads, summed in a fixed order
};

// ----------------------------------------------------------------------------------------------------
// Safetensors (§7): 8-byte little-endian header length, JSON header, raw little-endian data.

struct SafeTensor {
    std::string name;
    std::string dtype;              // "F32", "F64", "I32", "I64"
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;      // raw bytes, row-major
};
struct SafeTensorsFile {
    std::map<std::string, std::string> metadata;
    std::vector<SafeTensor> tensors;   // in file order
    const SafeTensor* find(const std::string& name) const;
};
size_t dtype_size(const std::string& dtype);   // throws for an unknown dtype
// Writes atomically: to path + ".<pid>.tmp" (a name of this process's own), flushed and synced, then renamed
// over path.
void safetensors_write(const std::string& path, const std::vector<SafeTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);
SafeTensorsFile safetensors_read(const std::string& path);

// Tensors of a float/double array, converted to the dtype asked for.
template <typename Real> SafeTensor make_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                                const Real* values, const std::string& dtype);
SafeTensor make_int_tensor(const std::string& name, const std::vector<int64_t>& shape, const int* values);
// Copies a tensor's values (F32 or F64, converted) into out, checking the shape.
template <typename Real> void read_tensor(const SafeTensor& t, const std::vector<int64_t>& shape, Real* out,
                                          const std::string& file);

// The config stored in a checkpoint's metadata (§7); a clear error if it is missing or bad.
FlashConfig checkpoint_config(const SafeTensorsFile& f, const std::string& path);
// Parameter tensors under their §7 names (prefix "" for weights, "grad." for gradients, ...).
template <typename Real> std::vector<SafeTensor> param_tensors(const FlashModel<Real>& m, const std::vector<Real>& buf,
                                                               const std::string& prefix, const std::string& dtype);
// Fills buf from the tensors prefix + name of f, refusing missing tensors or wrong shapes.
template <typename Real> void load_param_tensors(const FlashModel<Real>& m, std::vector<Real>& buf,
                                                 const SafeTensorsFile& f, const std::string& prefix,
                                                 const std::string& path);
template <typename Real> void save_weights(const std::string& path, const FlashModel<Real>& m);
// Loads weights into m; the file's config must have m's shape.
template <typename Real> void load_weights(const std::string& path, FlashModel<Real>& m);

// The debug state: the batch, the loss, every parameter and every parameter's gradient (grad.<name>),
// written in Real's precision (F32 or F64). Runs one forward and backward on m (grads are zeroed first).
template <typename Real> void write_debug_state(const std::string& path, FlashModel<Real>& m, const int* tokens,
                                                const int* targets, int B, int T);
