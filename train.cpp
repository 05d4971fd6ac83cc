// train.cpp: the ./train command. It trains a model of any arch (trainer.cpp does the work), or with --debug-state
// writes the state that the CUDA port and outside checks compare against: a batch, its loss, every parameter and every
// parameter's gradient.
#include <csignal>
#include <cstdio>
#include <string>

#include "debug_state.h"
#include "dist.h"
#include "trainer.h"

// SIGINT (Ctrl-C) and SIGTERM (what schedulers and `docker stop` send) both stop training at the end of the
// step, with a checkpoint; the exit status is then 128 + the signal's number (130, 143), as a shell reports a
// program killed by it. A second signal does not wait.
static void on_stop_signal(int sig) {
    if (g_stop_requested) std::_Exit(128 + sig);
    g_stop_requested = sig;
}

static int run(int argc, char** argv) {
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--debug-state") return debug_state_main(argc, argv);
        if (a == "--help" || a == "-h") { std::printf("%s", train_options_help().c_str()); return 0; }
    }
    TrainOptions o = parse_train_options(argc, argv);
    if (o.eval_only) {  // score a checkpoint on the whole validation set, print, exit
        run_eval_only(o);
        return 0;
    }
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
    std::signal(SIGUSR1, on_stop_signal);  // mpirun forwards SIGUSR1 to every rank (its Ctrl-C ends the job at once)
    TrainResult r = run_training(o);
    // SIGUSR1 is how mpirun asks every rank to stop (with a checkpoint): a normal end, or mpirun reports a failure.
    if (g_stop_requested == SIGUSR1) return 0;
    if (g_stop_requested) return 128 + g_stop_requested;
    if (r.interrupted) return 2;  // stopped by a non-finite loss or weights
    return 0;
}

// Under mpirun (dist.h) an error on any rank ends the whole job with that rank's message.
int main(int argc, char** argv) {
    Dist& dist = dist_init(&argc, &argv);
    try {
        const int rc = run(argc, argv);
        dist_finalize();
        return rc;
    } catch (const std::bad_alloc&) {
        const char* msg = "out of memory (hint: lower --batch, or choose a smaller model)";
        if (dist.size() > 1) dist_abort(msg);
        std::fprintf(stderr, "error: %s\n", msg);
        dist_finalize();
        return 1;
    } catch (const std::exception& ex) {
        if (dist.size() > 1) dist_abort(ex.what());
        std::fprintf(stderr, "error: %s\n", ex.what());
        dist_finalize();
        return 1;
    }
}
