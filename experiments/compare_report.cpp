// experiments/compare_report.cpp: the tables and the plot data of the comparison (docs/BASELINES.md §5) from the
// runs experiments/compare.sh made. Built by the Makefile as build/compare_report; compare.sh calls it.
//
//   build/compare_report MANIFEST RESULTS.md PLOT_DIR
//
// MANIFEST: one run per line, tab-separated: T, label, run directory, objective (ar|mlm), peak learning rate,
// tokens per step, steps. Each run directory holds the trainer's metrics.jsonl (one JSON object per step, per
// evaluation of the fixed validation sample, and a whole_val_* record at the end) and params.txt (the trained
// parameters, from the "parameters:" line of ./train). Writes RESULTS.md (a table per T), and in PLOT_DIR the data and a gnuplot script,
// plot.gp, that draws val_vs_time.png and step_time_vs_T.png next to RESULTS.md.
//
// Time is training time: the sum of the steps' "ms" up to a step (evaluation pauses left out), so models are timed
// on the same work and a rerun that resumed a run keeps its clock.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common.h"

using json = nlohmann::json;

namespace {

const char* kReference = "Transformer++";  // the paper's speed-up is measured against it

struct RunRecord {
    int T = 0;
    std::string label, dir, objective, lr;
    long long tokens_per_step = 0, steps = 0;
    long long params = 0;                      // from params.txt; 0 when not found
    std::map<long long, double> step_ms;       // step -> its time (a resumed run's repeated steps: the last)
    std::map<long long, double> val_loss;      // step -> loss on the fixed validation sample
    bool have_whole = false;
    double whole_val_loss = 0;
};

std::vector<std::string> split_tabs(const std::string& line) {
    std::vector<std::string> out;
    std::stringstream ss(line);
    std::string field;
    while (std::getline(ss, field, '\t')) out.push_back(field);
    return out;
}

long long parse_int(const std::string& s, const std::string& what, const std::string& where) {
    try {
        size_t used = 0;
        const long long v = std::stoll(s, &used);
        if (used == s.size()) return v;
    } catch (const std::exception&) {
    }
    FLASH_FAIL(where << ": " << what << " is '" << s << "', not a whole number", "the manifest is written by compare.sh");
}

void read_metrics(RunRecord& r) {
    const std::string path = r.dir + "/metrics.jsonl";
    std::ifstream in(path);
    FLASH_CHECK(in, "cannot open '" << path << "'", "the run did not start; run experiments/compare.sh again");
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
        // A run killed while writing leaves a half line; the resumed run goes on after it.
        if (j.is_discarded() || !j.is_object() || !j.contains("step")) continue;
        const long long step = j["step"].get<long long>();
        if (j.contains("ms")) r.step_ms[step] = j["ms"].get<double>();
        if (j.contains("val_loss")) r.val_loss[step] = j["val_loss"].get<double>();
        if (j.contains("whole_val_loss")) {
            r.have_whole = true;
            r.whole_val_loss = j["whole_val_loss"].get<double>();
        }
    }
}

void read_params(RunRecord& r) {
    std::ifstream in(r.dir + "/params.txt");
    if (!(in >> r.params)) r.params = 0;
}

std::vector<RunRecord> read_manifest(const std::string& path) {
    std::ifstream in(path);
    FLASH_CHECK(in, "cannot open the manifest '" << path << "'", "compare.sh writes it in its --out-dir");
    std::vector<RunRecord> runs;
    std::string line;
    int line_no = 0;
    while (std::getline(in, line)) {
        line_no++;
        if (line.empty()) continue;
        const std::string where = path + ":" + std::to_string(line_no);
        const std::vector<std::string> f = split_tabs(line);
        FLASH_CHECK(f.size() == 7, where << ": " << f.size() << " fields, expected 7 (T, label, dir, objective, lr, "
                                         "tokens per step, steps)", "the manifest is written by compare.sh");
        RunRecord r;
        r.T = (int)parse_int(f[0], "T", where);
        r.label = f[1];
        r.dir = f[2];
        r.objective = f[3];
        r.lr = f[4];
        r.tokens_per_step = parse_int(f[5], "tokens per step", where);
        r.steps = parse_int(f[6], "steps", where);
        read_metrics(r);
        read_params(r);
        runs.push_back(r);
    }
    FLASH_CHECK(!runs.empty(), "the manifest '" << path << "' lists no run", "compare.sh writes it");
    return runs;
}

// Training seconds up to and including `step`.
double seconds_at(const RunRecord& r, long long step) {
    double ms = 0;
    for (const auto& [s, t] : r.step_ms)
        if (s <= step) ms += t;
    return ms / 1e3;
}

// The median step time, leaving out step 1 (first-touch allocation and cold caches) when there are others.
double median_ms(const RunRecord& r) {
    std::vector<double> v;
    for (const auto& [s, t] : r.step_ms)
        if (s > 1 || r.step_ms.size() == 1) v.push_back(t);
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The paper's speed-up: the time the reference needs to reach its final (sample) validation loss, divided by the
// time this run needs to first reach that loss at one of its evaluations; "not reached" when it never does.
std::string speed_up(const RunRecord& r, const RunRecord* ref) {
    if (r.objective != "ar") return "n/a (masked LM)";
    if (!ref) return std::string("n/a (no ") + kReference + " run)";
    if (ref->val_loss.empty() || r.val_loss.empty()) return "n/a (no evaluation)";
    const auto& [ref_step, target] = *ref->val_loss.rbegin();
    const double ref_sec = seconds_at(*ref, ref_step);
    for (const auto& [step, loss] : r.val_loss)
        if (loss <= target) {
            char buf[32];
            std::snprintf(buf, sizeof buf, "%.2f×", ref_sec / seconds_at(r, step));
            return buf;
        }
    return "not reached";
}

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

std::string params_text(long long p) {
    if (p <= 0) return "?";
    std::string s = std::to_string(p), out;
    for (size_t i = 0; i < s.size(); i++) {
        if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
        out += s[i];
    }
    return out;
}

void write_results(const std::vector<RunRecord>& runs, const std::string& path) {
    std::ofstream md(path);
    FLASH_CHECK(md, "cannot write '" << path << "'", "check permissions or pick --results-dir");
    std::set<int> Ts;
    for (const RunRecord& r : runs) Ts.insert(r.T);
    md << "# The comparison (docs/BASELINES.md §5)\n\n"
       << "Made by `experiments/compare.sh` from the runs' `metrics.jsonl`. Every model at a T trains with the same "
          "data, optimizer (AdamW), schedule, tokens per step and steps. Columns: trained parameters; tokens/s and "
          "ms per step, the median over the steps after the first (training only, no evaluation); validation loss "
          "(nats/token) on the whole validation set at the end of the run, so at equal steps; the paper's speed-up: "
          "the training time "
       << kReference
       << " needs to reach its final validation loss on the fixed sample, divided by the training time the model "
          "needs to first reach that loss at one of its evaluations (\"not reached\" when it never does). Time is "
          "the sum of the steps' times, evaluations left out.\n";
    for (int T : Ts) {
        const RunRecord* ref = nullptr;
        for (const RunRecord& r : runs)
            if (r.T == T && r.label == kReference && r.objective == "ar") ref = &r;
        const RunRecord& any = *std::find_if(runs.begin(), runs.end(), [&](const RunRecord& r) { return r.T == T; });
        md << "\n## T = " << T << " (" << any.tokens_per_step << " tokens per step, " << any.tokens_per_step / T
           << " sequences, " << any.steps << " steps)\n\n"
           << "| model | objective | params | peak lr | tokens/s | ms/step | val loss (whole set) | speed-up |\n"
           << "|---|---|---:|---:|---:|---:|---:|---:|\n";
        for (const RunRecord& r : runs) {
            if (r.T != T) continue;
            const double ms = median_ms(r);
            const long long done = r.step_ms.empty() ? 0 : r.step_ms.rbegin()->first;
            md << "| " << r.label << " | " << r.objective << " | " << params_text(r.params) << " | " << r.lr << " | "
               << (ms > 0 ? fmt("%.0f", (double)r.tokens_per_step * 1e3 / ms) : "?") << " | "
               << (ms > 0 ? fmt("%.1f", ms) : "?") << " | "
               << (r.have_whole ? fmt("%.4f", r.whole_val_loss) : "unfinished (step " + std::to_string(done) + ")")
               << " | " << speed_up(r, ref) << " |\n";
        }
    }
    bool mlm = false;
    for (const RunRecord& r : runs) mlm = mlm || r.objective == "mlm";
    if (mlm)
        md << "\nThe masked-LM rows (non-causal models, `--objective mlm`, BASELINES.md §4) score only the masked "
              "tokens: their loss is not comparable with the auto-regressive rows.\n";
}

// One data file per run: training seconds and sample validation loss at each evaluation; one file per label: T
// and ms per step; plot.gp draws both pictures into out_dir (next to the results).
void write_plots(const std::vector<RunRecord>& runs, const std::string& plot_dir, const std::string& out_dir) {
    std::set<int> Ts;
    std::vector<std::string> labels;  // in manifest order, auto-regressive only
    for (const RunRecord& r : runs) {
        if (r.objective != "ar") continue;
        Ts.insert(r.T);
        if (std::find(labels.begin(), labels.end(), r.label) == labels.end()) labels.push_back(r.label);
    }
    auto file_name = [](std::string s) {
        for (char& c : s)
            if (!std::isalnum((unsigned char)c)) c = '_';
        return s;
    };
    std::ofstream gp(plot_dir + "/plot.gp");
    FLASH_CHECK(gp, "cannot write '" << plot_dir << "/plot.gp'", "check permissions");
    gp << "# drawn by experiments/compare.sh (gnuplot plot.gp) from the data files next to it\n"
       << "set terminal pngcairo size " << 480 * std::max<size_t>(1, Ts.size()) << ",460\n"
       << "set output '" << out_dir << "/val_vs_time.png'\n"
       << "set multiplot layout 1," << std::max<size_t>(1, Ts.size())
       << " title 'Validation loss (fixed sample) against training time'\n"
       << "set grid\nset key top right\nset xlabel 'training time (s)'\nset ylabel 'loss (nats/token)'\n";
    for (int T : Ts) {
        gp << "set title 'T = " << T << "'\nplot";
        bool first = true;
        for (const RunRecord& r : runs) {
            if (r.T != T || r.objective != "ar") continue;
            const std::string data = plot_dir + "/val_T" + std::to_string(T) + "_" + file_name(r.label) + ".dat";
            std::ofstream d(data);
            d << "# training seconds, validation loss on the fixed sample, step\n";
            for (const auto& [step, loss] : r.val_loss) d << seconds_at(r, step) << ' ' << loss << ' ' << step << '\n';
            gp << (first ? " " : ", ") << "'" << data << "' using 1:2 with linespoints title '" << r.label << "'";
            first = false;
        }
        gp << "\n";
    }
    gp << "unset multiplot\n"
       << "set terminal pngcairo size 720,480\nset output '" << out_dir << "/step_time_vs_T.png'\n"
       << "set title 'Training step time against T (same tokens per step)'\nset logscale xy 2\n"
       << "set xlabel 'T (tokens per sequence)'\nset ylabel 'ms per step'\nset key top left\nset xtics (";
    for (int T : Ts) gp << (T == *Ts.begin() ? "" : ", ") << T;
    gp << ")\nplot";
    bool first = true;
    for (const std::string& label : labels) {
        const std::string data = plot_dir + "/step_ms_" + file_name(label) + ".dat";
        std::ofstream d(data);
        d << "# T, median ms per step\n";
        for (const RunRecord& r : runs)
            if (r.label == label && r.objective == "ar") d << r.T << ' ' << median_ms(r) << '\n';
        gp << (first ? " " : ", ") << "'" << data << "' using 1:2 with linespoints title '" << label << "'";
        first = false;
    }
    gp << "\n";
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: build/compare_report MANIFEST RESULTS.md PLOT_DIR (experiments/compare.sh calls it)\n");
        return 2;
    }
    try {
        const std::vector<RunRecord> runs = read_manifest(argv[1]);
        const std::string results = argv[2];
        const size_t slash = results.find_last_of('/');
        const std::string out_dir = slash == std::string::npos ? "." : results.substr(0, slash);
        write_results(runs, results);
        write_plots(runs, argv[3], out_dir);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
