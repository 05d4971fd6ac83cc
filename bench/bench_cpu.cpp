// bench_cpu.cpp: where the time of a CPU training step goes. Times each op of one layer (forward and backward) at
// the shapes of a config, then whole training steps, and prints tokens/s and the share of the sgemm peak.
//   build/bench_cpu [small|tiny|base] [B] [T]
//   build/bench_cpu --scaling [OUT.png]   training step time against T = 256, 1024, 4096 (4096 tokens per step) of
//                                         FLASH (C = 128), FLASH-Quad (C = T), Transformer++, Performer and
//                                         Combiner (block 128), small presets; a table, and a plot when gnuplot is
//                                         there
#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "flash.h"
#include "formats/config.h"
#include "model.h"
#include "options.h"
#include "transformer.h"

static double seconds(const std::function<void()>& f, int reps = 3) {  // best of reps, after a warm-up
    f();  // warm-up
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

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

int main(int argc, char** argv) {
    try {
        if (argc > 1 && std::string(argv[1]) == "--scaling") return scaling(argc > 2 ? argv[2] : "scaling_cpu.png");
        FlashConfig c = config_preset("small");
        if (argc > 1) c = config_preset(argv[1]);
        const int B = argc > 2 ? (int)OptionTable::parse_integer("B", argv[2], 1, 1 << 20) : 8;
        if (argc > 3) c.seq_len = (int)OptionTable::parse_integer("T", argv[3], 1, 1 << 24);
        config_validate(c);
        const int T = c.seq_len, N = B * T, d = c.d, e = c.e, s = c.s, I = c.inner(), C = c.chunk, V = c.vocab_size;
        const int G = T / C;
        std::printf("config: d=%d e=%d s=%d L=%d C=%d V=%d, B=%d T=%d, %d threads\n", d, e, s, c.n_layers, C, V, B, T,
                    omp_get_max_threads());

        const double peak = measure_sgemm_peak();
        std::printf("sgemm 1024^3 peak: %.1f GFLOP/s\n\n", peak / 1e9);

        // One layer's ops at these shapes.
        Rng rng(1);
        auto buf = [&](size_t k) {
            std::vector<float> v(k);
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
        const float *u = act.data(), *v = act.data() + e, *z = act.data() + 2 * e;

        struct Row { const char* name; std::function<void()> f; };
        std::vector<Row> rows = {
            {"scalenorm fwd", [&] { scalenorm_forward(xn.data(), rstd.data(), x.data(), g.data(), N, d, c.eps); }},
            {"w_in fwd", [&] { matmul_forward(h.data(), xn.data(), w_in.data(), b_in.data(), N, d, I); }},
            {"silu fwd", [&] { silu_forward(act.data(), h.data(), (size_t)N * I); }},
            {"offset-scale fwd", [&] { offset_scale_forward(qq, kq, ql, kl, z, I, gamma.data(), beta.data(), N, s); }},
            {"rope fwd (x4)", [&] { for (float* hd : {qq, kq, ql, kl}) rope_forward(hd, cos_t.data(), sin_t.data(), N, T, s); }},
            {"local attn fwd", [&] { local_attention_forward(o.data(), relu_s.data(), qq, kq, v, I, bias.data(), B, T, C, s, e, c.causal); }},
            {"global attn fwd", [&] { global_attention_forward(o.data(), m.data(), ql, kl, v, I, B, T, C, s, e, c.causal); }},
            {"gate fwd", [&] { gate_forward(gated.data(), u, I, o.data(), N, e); }},
            {"w_out fwd", [&] { matmul_forward(y.data(), gated.data(), w_out.data(), b_out.data(), N, e, d); }},
            {"w_out bwd", [&] { matmul_backward(dgated.data(), dw_out.data(), db_out.data(), dx.data(), gated.data(), w_out.data(), N, e, d); }},
            {"gate bwd", [&] { gate_backward(dact.data(), I, d_o.data(), dgated.data(), u, I, o.data(), N, e); }},
            {"global attn bwd", [&] { global_attention_backward(dql, dkl, dact.data() + e, I, d_o.data(), m.data(), ql, kl, v, I, B, T, C, s, e, c.causal); }},
            {"local attn bwd", [&] { local_attention_backward(dqq, dkq, dact.data() + e, I, dbias.data(), d_o.data(), relu_s.data(), qq, kq, v, I, B, T, C, s, e, c.causal); }},
            {"rope bwd (x4)", [&] { for (float* hd : {dqq, dkq, dql, dkl}) rope_backward(hd, cos_t.data(), sin_t.data(), N, T, s); }},
            {"offset-scale bwd", [&] { offset_scale_backward(dact.data() + 2 * e, I, dgamma.data(), dbeta.data(), dqq, dkq, dql, dkl, z, I, gamma.data(), N, s); }},
            {"silu bwd", [&] { silu_backward(dh.data(), dact.data(), h.data(), (size_t)N * I); }},
            {"w_in bwd", [&] { matmul_backward(dxn.data(), dw_in.data(), db_in.data(), dh.data(), xn.data(), w_in.data(), N, d, I); }},
            {"scalenorm bwd", [&] { scalenorm_backward(dx.data(), dg.data(), dxn.data(), x.data(), rstd.data(), g.data(), N, d); }},
        };
        double layer_total = 0;
        std::printf("%-18s %10s\n", "op (one layer)", "ms");
        for (Row& r : rows) {
            double sec = seconds(r.f);
            layer_total += sec;
            std::printf("%-18s %10.2f\n", r.name, sec * 1e3);
        }
        std::printf("%-18s %10.2f  (x %d layers = %.1f ms)\n\n", "layer total", layer_total * 1e3, c.n_layers,
                    layer_total * 1e3 * c.n_layers);

        // Whole training steps.
        FlashModel<float> model(c);
        model.init_weights(1);
        std::vector<int> tokens(N), targets(N);
        for (int& tk : tokens) tk = rng.below(V);
        for (int& tk : targets) tk = rng.below(V);
        double fwd = seconds([&] { model.forward(tokens.data(), targets.data(), B, T); });
        double step = seconds([&] {
            model.forward(tokens.data(), targets.data(), B, T);
            model.zero_grad();
            model.backward();
            model.adamw_update(1e-4, AdamWConfig(), 1);
        });
        const double fl = forward_flops_per_token(c);
        std::printf("forward %.1f ms, training step %.1f ms: %.0f tokens/s, %.1f GFLOP/s = %.0f%% of the sgemm peak\n",
                    fwd * 1e3, step * 1e3, N / step, 3 * fl * N / step / 1e9, 100 * 3 * fl * N / step / peak);
        return 0;
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "error: %s\n", ex.what());
        return 1;
    }
}
