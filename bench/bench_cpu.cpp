// bench_cpu.cpp: where the time of a CPU training step goes. Times each op of one layer (forward and backward) at
// the shapes of a config, then whole training steps, and prints tokens/s and the share of the sgemm peak.
//   build/bench_cpu [small|tiny|base] [B] [T]   per-op times (warm caches, and the caches emptied before each run),
//                                         whole steps, time per op class (products, attention, elementwise, loss) as a
//                                         share of the step, model FLOP/s (and the multiply-adds performed) as a
//                                         share of the sgemm peak measured in the same run, activation bytes per
//                                         token, and the step with 1 thread against all threads
//   build/bench_cpu --elementwise         SiLU with exp_approx vs std::exp, fused rows and the gate with u's SiLU
//                                         vs the unfused ops
//   build/bench_cpu --long [T,...]        one sequence (B = 1) at long T (default 512,16384,65536): ms per token,
//                                         activation memory; against T = 512
//   build/bench_cpu --scaling [OUT.png]   training step time against T = 256, 1024, 4096 (4096 tokens per step) of
//                                         FLASH (C = 128), FLASH-Quad (C = T), Transformer++, Performer and
//                                         Combiner (block 128), small presets; a table, and a plot when gnuplot is
//                                         there
#include <cblas.h>
#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_util.h"
#include "flash.h"
#include "formats/config.h"
#include "model.h"
#include "options.h"
#include "transformer.h"

// One model of the comparison (BASELINES.md §5): its name in the table and its config at sequence length T.
struct ScalingModel {
    const char* name;
    std::function<nlohmann::json(int T)> config;
};

// The small presets, parameters matched (FLASH: 8 layers; the baselines: 4 blocks), at sequence length T.
static std::vector<ScalingModel> scaling_models() {
    auto flash = [](int chunk_cap) {
        return [chunk_cap](int T) {
            FlashConfig c = config_preset("small");
            c.seq_len = T;
            c.chunk = chunk_cap ? std::min(T, chunk_cap) : T;
            return config_to_json(c);
        };
    };
    auto baseline = [](const char* arch) {
        return [arch](int T) {
            TransformerConfig c = transformer_preset("small", arch);
            c.seq_len = T;
            c.block = std::min(T, c.block);
            return transformer_config_to_json(c);
        };
    };
    return {{"FLASH", flash(128)}, {"FLASH-Quad", flash(0)}, {"Transformer++", baseline("transformer++")},
            {"Performer", baseline("performer")}, {"Combiner", baseline("combiner")}};
}

// Step time (forward, backward, AdamW) against T at 4096 tokens per step. FLASH's cost per token is constant in T;
// FLASH-Quad's and Transformer++'s grow linearly, Combiner's as T/c (FLASH.md §4, BASELINES.md §3). Measured, not
// assumed.
static int scaling(const std::string& png) {
    const int tokens = 4096;
    const std::vector<int> lengths = {256, 1024, 4096};
    const std::vector<ScalingModel> models = scaling_models();
    std::printf("training step (forward, backward, AdamW) against sequence length, small presets (matched "
                "parameters), %d tokens per step, %d threads; best of 2 after a warm-up\n", tokens,
                omp_get_max_threads());
    std::printf("%6s %6s", "T", "B");
    for (const ScalingModel& m : models) std::printf(" | %13s ms  tok/s", m.name);
    std::printf("\n");
    const std::string dat = png + ".dat";
    FILE* out = std::fopen(dat.c_str(), "w");
    FLASH_CHECK(out, "cannot write " << dat, "pick another output path");
    for (int T : lengths) {
        const int B = tokens / T, N = B * T;
        std::printf("%6d %6d", T, B);
        std::fprintf(out, "%d", T);
        for (const ScalingModel& sm : models) {
            std::unique_ptr<Model<float>> model = make_model<float>(sm.config(T));
            model->init_weights(1);
            const int V = sm.config(T).at("vocab_size").get<int>();
            Rng rng(2);
            std::vector<int> tok(N), tgt(N);
            for (int& t : tok) t = rng.below(V);
            for (int& t : tgt) t = rng.below(V);
            int64_t step = 0;
            const double ms = 1e3 * seconds([&] {
                model->forward(tok.data(), tgt.data(), B, T);
                model->zero_grad();
                model->backward();
                model->adamw_update(1e-4, AdamWConfig(), ++step);
            }, 2);
            std::printf(" | %16.1f %6.0f", ms, tokens / ms * 1e3);
            std::fprintf(out, " %.3f", ms);
            std::fflush(stdout);
        }
        std::printf("\n");
        std::fprintf(out, "\n");
    }
    std::fclose(out);
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
        std::printf("gnuplot not found: no plot (the figures are in %s)\n", dat.c_str());
        return 0;
    }
    const std::string script = png + ".gp";
    FILE* gp = std::fopen(script.c_str(), "w");
    FLASH_CHECK(gp, "cannot write " << script, "");
    std::fprintf(gp,
                 "set terminal pngcairo size 800,500\nset output '%s'\n"
                 "set title 'Training step on the CPU, %d tokens per step (small presets, matched parameters)'\n"
                 "set xlabel 'sequence length T'\nset ylabel 'ms per step'\nset logscale x 2\nset grid\n"
                 "set key left top\nplot ",
                 png.c_str(), tokens);
    for (size_t i = 0; i < models.size(); i++)
        std::fprintf(gp, "%s'%s' using 1:%zu with linespoints title '%s'", i ? ", " : "", dat.c_str(), i + 2,
                     models[i].name);
    std::fprintf(gp, "\n");
    std::fclose(gp);
    if (std::system(("gnuplot '" + script + "'").c_str()) == 0) std::printf("plot: %s\n", png.c_str());
    return 0;
}

// The step's time per op class, from the per-op times (layer ops × L, head ops once), as a share of the measured
// step; "other" is what the op rows do not cover (zeroing the gradients, the embedding, AdamW, ...).
// warm: the ops timed again and again, their inputs in the caches; cold: the caches emptied before each run.
static void print_op_classes(const char* const* names, const double* warm, const double* cold, int kinds,
                             double step) {
    double covered_warm = 0, covered_cold = 0;
    std::printf("time per op class, share of the step:       warm caches        cold caches\n");
    for (int k = 0; k < kinds; k++) {
        covered_warm += warm[k];
        covered_cold += cold[k];
        std::printf("  %-12s %27.1f ms %5.1f%%  %8.1f ms %5.1f%%\n", names[k], warm[k] * 1e3, 100 * warm[k] / step,
                    cold[k] * 1e3, 100 * cold[k] / step);
    }
    std::printf("  %-12s %27.1f ms %5.1f%%  %8.1f ms %5.1f%%\n", "other", (step - covered_warm) * 1e3,
                100 * (step - covered_warm) / step, (step - covered_cold) * 1e3, 100 * (step - covered_cold) / step);
}

// A buffer to read through before a cold run: twice the last-level cache (at least 128 MB of it) that glibc reports,
// which on a virtual machine can be the whole socket's (320 MB here, where one core's slice is 32 MB).
static std::vector<float> eviction_buffer() {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);  // 0 or −1 where glibc does not know it
    const size_t bytes = 2 * std::max<size_t>(size_t(128) << 20, (size_t)std::max(0L, l3));
    std::vector<float> evict;
    assign_zeros_on_huge_pages(evict, bytes / sizeof(float));
    return evict;
}

// Empties the caches before a cold run: reads the eviction buffer on every thread (reading, not writing, so that no
// dirty lines are left to write back). In a step most ops find their inputs in memory, not in the caches: one step of
// the small config walks 800 MB.
static void evict_caches(const std::vector<float>& evict) {
    float sum = 0;
#pragma omp parallel for reduction(+ : sum)
    for (size_t i = 0; i < evict.size(); i += 16) sum += evict[i];  // one value per 64-byte line
    volatile float sink = sum;  // keeps the reads
    (void)sink;
}

static double step_seconds(const FlashConfig& c, int B, int T, int reps) {
    FlashModel<float> model(c);
    model.init_weights(1);
    Rng rng(3);
    std::vector<int> tok((size_t)B * T), tgt((size_t)B * T);
    for (int& t : tok) t = rng.below(c.vocab_size);
    for (int& t : tgt) t = rng.below(c.vocab_size);
    return seconds([&] {
        model.forward(tok.data(), tgt.data(), B, T);
        model.zero_grad();
        model.backward();
        model.adamw_update(1e-4, AdamWConfig(), 1);
    }, reps);
}

// The same step with one thread (OpenMP and OpenBLAS) and with all of them.
static void compare_threads(const FlashConfig& c, int B, int T, double peak) {
    const int all = omp_get_max_threads(), blas_all = openblas_get_num_threads();
    if (all < 2) return;
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    const double one = step_seconds(c, B, T, 2);
    omp_set_num_threads(all);
    openblas_set_num_threads(blas_all);
    const double many = step_seconds(c, B, T, 2);
    const double fl = 3 * forward_flops_per_token(c) * B * T;
    std::printf("threads: 1 thread %.1f ms (%.1f GFLOP/s), %d threads %.1f ms (%.1f GFLOP/s, %.1f%% of the peak): "
                "%.2fx\n", one * 1e3, fl / one / 1e9, all, many * 1e3, fl / many / 1e9, 100 * fl / many / peak,
                one / many);
}

// One sequence at long T: the time per token must stay flat (FLASH's cost is linear in T), the memory linear.
static int long_context(const std::vector<int64_t>& lengths) {
    FlashConfig c = config_preset("small");
    std::printf("long context, small config, B = 1, %d threads (lengths in increasing order: the process's peak "
                "RSS after each is that length's)\n%8s %12s %12s %14s %14s\n", omp_get_max_threads(), "T", "step ms",
                "us/token", "activations MB", "peak RSS MB");
    double base = 0;
    for (int64_t T : lengths) {
        c.seq_len = (int)T;
        config_validate(c);
        size_t n_act, n_grad;
        activation_counts(c, 1, (int)T, &n_act, &n_grad);
        const double sec = step_seconds(c, 1, (int)T, T > 16384 ? 1 : 2);
        const double per_token = sec / T;
        if (base == 0) base = per_token;
        struct rusage usage {};
        getrusage(RUSAGE_SELF, &usage);
        std::printf("%8lld %12.1f %12.1f %14.0f %14.0f   %.2fx the first T's time per token\n", (long long)T,
                    sec * 1e3, per_token * 1e6, 4.0 * (n_act + n_grad) / 1e6, usage.ru_maxrss / 1024.0,
                    per_token / base);
        std::fflush(stdout);
    }
    return 0;
}

// How much of this process's resident memory is on transparent huge pages (ops.h, assign_zeros_on_huge_pages), from
// /proc/self/smaps_rollup: {huge, resident} in MB, {0, 0} where the file is missing.
static std::pair<double, double> huge_page_share() {
    FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
    if (!f) return {0, 0};
    char line[256];
    double huge = 0, rss = 0, kb;
    while (std::fgets(line, sizeof line, f)) {
        if (std::sscanf(line, "AnonHugePages: %lf kB", &kb) == 1) huge = kb / 1024;
        if (std::sscanf(line, "Rss: %lf kB", &kb) == 1) rss = kb / 1024;
    }
    std::fclose(f);
    return {huge, rss};
}

// Tuned against naive, back to back at the small config's shapes (B=8, T=512): SiLU with exp_approx against SiLU
// with std::exp, the fused rows (gau_rows_*, on the [v | z] plane) against the unfused ops, and the gate with u's
// SiLU against SiLU then the gate. Best of 5 runs each.
static int elementwise_ab() {
    const FlashConfig c = config_preset("small");
    const int B = 8, T = c.seq_len, N = B * T, e = c.e, s = c.s, width = e + s;  // rows [v | z]
    const size_t n = (size_t)N * width, Ns = (size_t)N * s, Ne = (size_t)N * e;
    Rng rng(5);
    std::vector<float> h(n), act(n), dact(n), dh(n), heads(4 * Ns), dheads(4 * Ns), gamma(4 * s, 1.0f), beta(4 * s),
        dgamma(4 * s), dbeta(4 * s), h_u(Ne), u(Ne), o(Ne), gated(Ne), dgated(Ne), du(Ne), dh_u(Ne), d_o(Ne);
    for (float& v : h) v = (float)(3 * rng.normal());
    for (float& v : dact) v = (float)rng.normal();
    for (float& v : dheads) v = (float)rng.normal();
    for (std::vector<float>* x : {&h_u, &o, &dgated})
        for (float& v : *x) v = (float)rng.normal();
    std::vector<double> cos_t, sin_t;
    rope_tables(cos_t, sin_t, 0, T, s, c.rope_base);
    float *hd = heads.data(), *dhd = dheads.data();
    auto ms = [](const std::function<void()>& f) { return 1e3 * seconds(f, 5); };
    std::printf("elementwise, tuned vs naive, %d threads, N = %d rows of [v | z] (%d) and of u (%d) (best of 5)\n",
                omp_get_max_threads(), N, width, e);
    const double sf_naive = ms([&] { silu_forward_naive(act.data(), h.data(), n); });
    const double sf = ms([&] { silu_forward(act.data(), h.data(), n); });
    const double sb_naive = ms([&] { silu_backward_naive(dh.data(), dact.data(), h.data(), n); });
    const double sb = ms([&] { silu_backward(dh.data(), dact.data(), h.data(), n); });
    std::printf("  silu fwd: std::exp, one thread %8.2f ms   exp_approx, vectorised %8.2f ms\n", sf_naive, sf);
    std::printf("  silu bwd: std::exp, one thread %8.2f ms   exp_approx, vectorised %8.2f ms\n", sb_naive, sb);
    const double chain_f = ms([&] {
        silu_forward(act.data(), h.data(), n);
        offset_scale_forward(hd, hd + Ns, hd + 2 * Ns, hd + 3 * Ns, act.data() + e, width, gamma.data(), beta.data(),
                             N, s);
        for (int i = 0; i < 4; i++) rope_forward(hd + i * Ns, cos_t.data(), sin_t.data(), N, T, s);
    });
    const double fused_f = ms([&] {
        gau_rows_forward(act.data(), hd, hd + Ns, hd + 2 * Ns, hd + 3 * Ns, h.data(), gamma.data(), beta.data(),
                         cos_t.data(), sin_t.data(), N, T, e, s);
    });
    const double chain_b = ms([&] {
        for (int i = 0; i < 4; i++) rope_backward(dhd + i * Ns, cos_t.data(), sin_t.data(), N, T, s);
        offset_scale_backward(dact.data() + e, width, dgamma.data(), dbeta.data(), dhd, dhd + Ns, dhd + 2 * Ns,
                              dhd + 3 * Ns, act.data() + e, width, gamma.data(), N, s);
        silu_backward(dh.data(), dact.data(), h.data(), n);
    });
    const double fused_b = ms([&] {
        gau_rows_backward(dh.data(), dgamma.data(), dbeta.data(), dact.data(), dhd, dhd + Ns, dhd + 2 * Ns,
                          dhd + 3 * Ns, h.data(), act.data(), gamma.data(), cos_t.data(), sin_t.data(), N, T, e, s);
    });
    const double gate_chain_f = ms([&] {
        silu_forward(u.data(), h_u.data(), Ne);
        gate_forward(gated.data(), u.data(), e, o.data(), N, e);
    });
    const double gate_fused_f = ms([&] { silu_gate_forward(gated.data(), h_u.data(), o.data(), N, e); });
    const double gate_chain_b = ms([&] {
        silu_forward(u.data(), h_u.data(), Ne);  // u again, as the backward would have to
        gate_backward(du.data(), e, d_o.data(), dgated.data(), u.data(), e, o.data(), N, e);
        silu_backward(dh_u.data(), du.data(), h_u.data(), Ne);
    });
    const double gate_fused_b = ms([&] {
        silu_gate_backward(dh_u.data(), d_o.data(), dgated.data(), h_u.data(), o.data(), N, e);
    });
    std::printf("  silu + offset-scale + rope fwd: three ops %8.2f ms   fused rows %8.2f ms\n", chain_f, fused_f);
    std::printf("  silu + offset-scale + rope bwd: three ops %8.2f ms   fused rows %8.2f ms\n", chain_b, fused_b);
    std::printf("  silu + gate fwd:                two ops   %8.2f ms   fused      %8.2f ms\n", gate_chain_f,
                gate_fused_f);
    std::printf("  silu + gate bwd (u recomputed): three ops %8.2f ms   fused      %8.2f ms\n", gate_chain_b,
                gate_fused_b);
    return 0;
}

int main(int argc, char** argv) {
    try {
        if (argc > 1 && std::string(argv[1]) == "--scaling") return scaling(argc > 2 ? argv[2] : "scaling_cpu.png");
        if (argc > 1 && std::string(argv[1]) == "--elementwise") return elementwise_ab();
        if (argc > 1 && std::string(argv[1]) == "--long") {
            std::vector<int64_t> lengths = {512, 16384, 65536};
            if (argc > 2) {
                lengths.clear();
                std::stringstream list(argv[2]);
                std::string item;
                while (std::getline(list, item, ',')) lengths.push_back(OptionTable::parse_integer("T", item, 1, 1 << 24));
            }
            return long_context(lengths);
        }
        FlashConfig c = config_preset("small");
        if (argc > 1) c = config_preset(argv[1]);
        const int B = argc > 2 ? (int)OptionTable::parse_integer("B", argv[2], 1, 1 << 20) : 8;
        if (argc > 3) c.seq_len = (int)OptionTable::parse_integer("T", argv[3], 1, 1 << 24);
        config_validate(c);
        const int T = c.seq_len, N = B * T, d = c.d, e = c.e, s = c.s, I = c.inner(), C = c.chunk, V = c.vocab_size;
        const int G = T / C;
        std::printf("config: d=%d e=%d s=%d L=%d C=%d V=%d, B=%d T=%d, %d threads\n", d, e, s, c.n_layers, C, V, B, T,
                    omp_get_max_threads());

        double openblas_peak = 0;
        double peak = measure_sgemm_peak(&openblas_peak);  // measured again in turns with the whole steps below
        std::printf("sgemm 1024^3 peak: %.1f GFLOP/s (OpenBLAS's own threads: %.1f; split among OpenMP threads by "
                    "gemm: the better of the two is the peak)\n\n", peak / 1e9, openblas_peak / 1e9);

        // One layer's ops at these shapes.
        Rng rng(1);
        auto buf = [&](size_t k) {  // on huge pages where the kernel allows, as the model's buffers are
            std::vector<float> v;
            assign_zeros_on_huge_pages(v, k);
            for (float& x : v) x = (float)(0.1 * rng.normal());
            return v;
        };
        auto x = buf((size_t)N * d), xn = buf((size_t)N * d), rstd = buf(N), w_in = buf((size_t)d * I), b_in = buf(I);
        auto h = buf((size_t)N * I), act = buf((size_t)N * I), heads = buf((size_t)4 * N * s), gamma = buf(4 * s),
             beta = buf(4 * s), relu_s = buf((size_t)B * G * C * C), m = buf((size_t)B * G * s * e),
             o = buf((size_t)N * e), gated = buf((size_t)N * e), w_out = buf((size_t)e * d), b_out = buf(d),
             y = buf((size_t)N * d), bias = buf(c.n_rel_bias()), g = std::vector<float>{1.0f};
        auto dx = buf((size_t)N * d), dxn = buf((size_t)N * d), dh = buf((size_t)N * I), dact = buf((size_t)N * I),
             dheads = buf((size_t)4 * N * s), d_o = buf((size_t)N * e), dgated = buf((size_t)N * e),
             dw_in = buf((size_t)d * I), db_in = buf(I), dw_out = buf((size_t)e * d), db_out = buf(d),
             dgamma = buf(4 * s), dbeta = buf(4 * s), dbias = buf(c.n_rel_bias()), dg = std::vector<float>{0.0f};
        std::vector<double> cos_t, sin_t;
        rope_tables(cos_t, sin_t, 0, T, s, c.rope_base);
        float *qq = heads.data(), *kq = qq + (size_t)N * s, *ql = kq + (size_t)N * s, *kl = ql + (size_t)N * s;
        float *dqq = dheads.data(), *dkq = dqq + (size_t)N * s, *dql = dkq + (size_t)N * s, *dkl = dql + (size_t)N * s;
        // h, act and their gradients in the model's two planes (flash.h, vz_plane): u, then [v | z]
        float *h_vz = vz_plane(h.data(), N, e), *act_vz = vz_plane(act.data(), N, e), *dh_vz = vz_plane(dh.data(), N, e),
              *dv = vz_plane(dact.data(), N, e);
        const float* v = act_vz;
        const int ldv = e + s;

        // Each op has a class; the step's time per class is each op's time × the times a step runs it: the layer
        // ops L times (the SiLU recompute L − 1: the forward leaves the last layer's act), the head once.
        enum Kind { kProducts, kAttention, kElementwise, kLoss, kKinds };
        const char* kind_names[kKinds] = {"products", "attention", "elementwise", "loss"};
        const int L = c.n_layers;
        enum Times { kEachLayer, kEachLayerButLast, kOnce };
        struct Row { const char* name; Kind kind; Times times; std::function<void()> f; };
        auto probs = buf((size_t)N * V), logits = buf((size_t)N * V), dlogits = buf((size_t)N * V), losses = buf(N),
             wte = buf((size_t)V * d), dwte = buf((size_t)V * d);
        std::vector<int> tgt(N);
        for (int& t : tgt) t = rng.below(V);
        std::vector<Row> rows = {
            {"scalenorm fwd", kElementwise, kEachLayer, [&] { scalenorm_forward(xn.data(), rstd.data(), x.data(), g.data(), N, d, c.eps); }},
            {"w_in fwd", kProducts, kEachLayer, [&] { matmul_forward(h.data(), xn.data(), w_in.data(), b_in.data(), N, d, e, I); matmul_forward(h_vz, xn.data(), w_in.data() + e, b_in.data() + e, N, d, e + s, I); }},
            {"gau rows fwd", kElementwise, kEachLayer, [&] { gau_rows_forward(act_vz, qq, kq, ql, kl, h_vz, gamma.data(), beta.data(), cos_t.data(), sin_t.data(), N, T, e, s); }},
            {"local attn fwd", kAttention, kEachLayer, [&] { local_attention_forward(o.data(), relu_s.data(), qq, kq, v, ldv, bias.data(), B, T, C, s, e, c.causal); }},
            {"global attn fwd", kAttention, kEachLayer, [&] { global_attention_forward(o.data(), m.data(), ql, kl, v, ldv, B, T, C, s, e, c.causal); }},
            {"silu gate fwd", kElementwise, kEachLayer, [&] { silu_gate_forward(gated.data(), h.data(), o.data(), N, e); }},
            {"w_out+res fwd", kProducts, kEachLayer, [&] { matmul_residual_forward(y.data(), x.data(), gated.data(), w_out.data(), b_out.data(), N, e, d); }},
            {"w_out bwd", kProducts, kEachLayer, [&] { matmul_backward(dgated.data(), dw_out.data(), db_out.data(), dx.data(), gated.data(), w_out.data(), N, e, d); }},
            {"silu gate bwd", kElementwise, kEachLayer, [&] { silu_gate_backward(dh.data(), d_o.data(), dgated.data(), h.data(), o.data(), N, e); }},
            {"global attn bwd", kAttention, kEachLayer, [&] { global_attention_backward(dql, dkl, dv, ldv, d_o.data(), m.data(), ql, kl, v, ldv, B, T, C, s, e, c.causal); }},
            {"local attn bwd", kAttention, kEachLayer, [&] { local_attention_backward(dqq, dkq, dv, ldv, dbias.data(), d_o.data(), relu_s.data(), qq, kq, v, ldv, B, T, C, s, e, c.causal); }},
            {"silu recompute", kElementwise, kEachLayerButLast, [&] { silu_forward(act_vz, h_vz, (size_t)N * (e + s)); }},
            {"gau rows bwd", kElementwise, kEachLayer, [&] { gau_rows_backward(dh_vz, dgamma.data(), dbeta.data(), dv, dqq, dkq, dql, dkl, h_vz, act_vz, gamma.data(), cos_t.data(), sin_t.data(), N, T, e, s); }},
            {"w_in bwd", kProducts, kEachLayer, [&] { matmul_backward(dxn.data(), dw_in.data(), db_in.data(), dh.data(), xn.data(), w_in.data(), N, d, e, I); matmul_backward(dxn.data(), dw_in.data() + e, db_in.data() + e, dh_vz, xn.data(), w_in.data() + e, N, d, e + s, I); }},
            {"scalenorm bwd", kElementwise, kEachLayer, [&] { scalenorm_backward(dx.data(), dg.data(), dxn.data(), x.data(), rstd.data(), g.data(), N, d); }},
            {"logits fwd", kProducts, kOnce, [&] { logits_forward(logits.data(), xn.data(), wte.data(), N, d, V); }},
            {"xent fwd", kLoss, kOnce, [&] { crossentropy_forward(losses.data(), probs.data(), logits.data(), tgt.data(), N, V); }},
            {"xent bwd", kLoss, kOnce, [&] { crossentropy_backward(dlogits.data(), probs.data(), tgt.data(), N, V); }},
            {"logits bwd", kProducts, kOnce, [&] { logits_backward(dxn.data(), dwte.data(), dlogits.data(), xn.data(), wte.data(), N, d, V); }},
        };
        double layer_total[2] = {}, layers_total[2] = {}, kind_warm[kKinds] = {}, kind_cold[kKinds] = {};
        std::printf("%-18s %10s %10s\n", "op (one layer)", "warm ms", "cold ms");
        std::vector<float> evict = eviction_buffer();
        for (Row& r : rows) {
            // best of enough runs to fill about 0.2 s (at least 3): a short op's best of 3 still moved by 2x from run
            // to run on a shared machine
            const int reps = std::max(3, std::min(100, (int)(0.2 / seconds(r.f, 1))));
            const double warm = seconds(r.f, reps), cold = seconds(r.f, std::min(reps, 10), [&] { evict_caches(evict); });
            const int times = r.times == kOnce ? 1 : r.times == kEachLayer ? L : L - 1;
            if (r.times != kOnce) {
                layer_total[0] += warm, layer_total[1] += cold;
                layers_total[0] += warm * times, layers_total[1] += cold * times;
            }
            kind_warm[r.kind] += warm * times;
            kind_cold[r.kind] += cold * times;
            const char* note = r.times == kOnce ? "  (once per step)" : r.times == kEachLayer ? "" : "  (L - 1 layers)";
            std::printf("%-18s %10.2f %10.2f%s\n", r.name, warm * 1e3, cold * 1e3, note);
        }
        std::vector<float>().swap(evict);
        std::printf("%-18s %10.2f %10.2f  (the %d layers of a step: %.1f, %.1f ms)\n\n", "layer total",
                    layer_total[0] * 1e3, layer_total[1] * 1e3, L, layers_total[0] * 1e3, layers_total[1] * 1e3);

        // Whole training steps.
        FlashModel<float> model(c);
        model.init_weights(1);
        std::vector<int> tokens(N), targets(N);
        for (int& tk : tokens) tk = rng.below(V);
        for (int& tk : targets) tk = rng.below(V);
        double fwd = seconds([&] { model.forward(tokens.data(), targets.data(), B, T); });
        auto one_step = [&] {
            model.forward(tokens.data(), targets.data(), B, T);
            model.zero_grad();
            model.backward();
            model.adamw_update(1e-4, AdamWConfig(), 1);
        };
        // The step and the peak in turns, three rounds of each over the same ten seconds, the best of each kept (with
        // the peak of the start): a noisy moment then costs one round of one of them, not the whole of either.
        double step = 1e30;
        for (int round = 0; round < 3; round++) {
            step = std::min(step, seconds(one_step, 1));
            double round_openblas = 0;
            peak = std::max(peak, measure_sgemm_peak(&round_openblas));
            openblas_peak = std::max(openblas_peak, round_openblas);
        }
        const double fl = forward_flops_per_token(c), fl_done = forward_flops_done_per_token(c, T);
        std::printf("forward %.1f ms, training step %.1f ms: %.0f tokens/s, %.1f GFLOP/s = %.1f%% of the sgemm peak "
                    "(%.1f GFLOP/s, the best of the start and of three rounds taken in turns with the steps; %.0f%% of "
                    "OpenBLAS's own threaded sgemm)\n", fwd * 1e3, step * 1e3, N / step, 3 * fl * N / step / 1e9,
                    100 * 3 * fl * N / step / peak, peak / 1e9, 100 * 3 * fl * N / step / openblas_peak);
        std::printf("  in the multiply-adds performed (%.1f%% of the model's count; causal, the zero blocks are "
                    "skipped: FLASH.md §4): %.1f GFLOP/s = %.1f%% of the peak\n", 100 * fl_done / fl,
                    3 * fl_done * N / step / 1e9, 100 * 3 * fl_done * N / step / peak);
        print_op_classes(kind_names, kind_warm, kind_cold, kKinds, step);
        size_t n_act, n_grad;
        activation_counts(c, B, T, &n_act, &n_grad);
        std::printf("activations: %.1f KB per token saved for the backward, %.1f KB per token of gradient scratch "
                    "(%.0f MB in all at B=%d T=%d)\n", 4.0 * n_act / N / 1024, 4.0 * n_grad / N / 1024,
                    4.0 * (n_act + n_grad) / 1e6, B, T);
        const auto [huge_mb, rss_mb] = huge_page_share();
        std::printf("huge pages: %.0f MB of the %.0f MB resident (the flat buffers ask for them; 0 where the kernel "
                    "declines)\n", huge_mb, rss_mb);
        compare_threads(c, B, T, peak);
        return 0;
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "error: %s\n", ex.what());
        return 1;
    }
}
