// debug_state.h: the debug state, one file that outside checks and ports (the CUDA code, another framework) compare
// against: a batch, its loss, every parameter under the names of docs/FLASH.md §7 and every parameter's gradient as
// grad.<name>, in the model's precision (F32 or F64), as safetensors. With --objective mlm the batch is masked as in
// training (data/mlm.h): batch.targets holds -1 where a position is not chosen.
#pragma once
#include <string>

#include "model.h"

// Runs one forward and backward on m (gradients zeroed first), writes the state to path, returns the loss.
template <typename Real> double write_debug_state(const std::string& path, Model<Real>& m, const int* tokens,
                                                const int* targets, int B, int T);

// The command `./train --debug-state OUT [options]` (its options: --help). Returns the exit status.
int debug_state_main(int argc, char** argv);
