// bench_cpu.cpp: where the time of a CPU training step goes. Times each op of one layer (forward and backward) at
// the shapes of a config, then whole training steps, and prints tokens/s and the share of the sgemm peak.
//   build/bench_cpu [small|tiny|base|config.json] [B] [T]
#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "flash.h"

static double seconds(const std::function<void()>& f, int reps = 3) {
    f();  // warm-up
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

int main(int argc, char** argv) {
    try {
        FlashConfig c = config_preset("small");
        if (argc > 1) c = config_preset(argv[1]);
        const int B = argc > 2 ? std::atoi(argv[2]) : 8;
        if (argc > 3) c.seq_len = std::atoi(argv[3]);
        config_validate(c);
        const int T = c.seq_len, N = B * T, d = c.d, e = c.e, s = c.s, I = c.inner(), C = c.chunk, V = c.vocab_size;
        const int G = T / C;
        std::printf("config: d=%d e=%d s=%d L=%d C=%d V=%d, B=%d T=%d, %d threads\n", d, e, s, c.n_layers, C, V, B, T,
                    omp_get_max_threads());

        // sgemm peak at a large square size
        const int n = 1024;
        std::vector<float> a((size_t)n * n, 1.0f), b((size_t)n * n, 0.5f), cc((size_t)n * n);
        double t = seconds([&] {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                        cc.data(), n);
        });
        const double peak = 2.0 * n * n * n / t;
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
        const double fl = 2 * ((double)d * I + (double)e * d) * c.n_layers + 2.0 * C * (s + e) * c.n_layers +
                          4.0 * s * e * c.n_layers + 2.0 * d * V;
        std::printf("forward %.1f ms, training step %.1f ms: %.0f tokens/s, %.1f GFLOP/s = %.0f%% of the sgemm peak\n",
                    fwd * 1e3, step * 1e3, N / step, 3 * fl * N / step / 1e9, 100 * 3 * fl * N / step / peak);
        return 0;
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "error: %s\n", ex.what());
        return 1;
    }
}
