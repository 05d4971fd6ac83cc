#!/usr/bin/env bash
# The comparison's smoke test: experiments/compare.sh --smoke on a tiny corpus in a temporary directory.
# It checks what the command produces (a table per T with one row per model, the masked-LM row, both pictures,
# every run's metrics) and how it reuses runs (a second invocation trains nothing; a deleted run is trained alone;
# a run stopped before its end is resumed), never the runs' outcomes. Needs ./train, tokenizer/bpe and
# build/compare_report (make test builds them). Prints one "[shell] test cases:" line for test/run_all.sh.
set -u
cd "$(dirname "$0")/.." || exit 1
tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
passed=0; failed=0
check() {  # check NAME CONDITION...: one test case
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $name"; fi
}
finish() {
  echo "[shell] test cases: $((passed + failed)) | $passed passed | $failed failed"
  [ "$failed" = 0 ]
  exit
}

# A tiny corpus: seeded sentences from a few words, a tokenizer of 300 ids, train and validation token files.
awk 'BEGIN { split("the a state union of and to in our people nation law year congress we shall whale sea ship", w, " ");
             x = 7; for (line = 0; line < 400; line++) { s = "";
               for (k = 0; k < 12; k++) { x = (x * 1103515245 + 12345) % 2147483648; s = s w[1 + int(x / 65536) % 20] " " }
               print s "." } }' > "$tmp/all.txt"
head -n 340 "$tmp/all.txt" > "$tmp/train.txt"; tail -n 60 "$tmp/all.txt" > "$tmp/val.txt"
mkdir -p "$tmp/data"
tokenizer/bpe train --vocab-size 300 --out "$tmp/data/tokenizer.json" "$tmp/train.txt" > /dev/null 2>&1 &&
  tokenizer/bpe encode --tokenizer "$tmp/data/tokenizer.json" --out "$tmp/data/train.bin" "$tmp/train.txt" > /dev/null 2>&1 &&
  tokenizer/bpe encode --tokenizer "$tmp/data/tokenizer.json" --out "$tmp/data/val.bin" "$tmp/val.txt" > /dev/null 2>&1
check "the tiny corpus is prepared" test -f "$tmp/data/val.bin"

compare() { experiments/compare.sh --smoke --data-dir "$tmp/data" --out-dir "$tmp/runs" --results-dir "$tmp/results"; }
sums() { find "$tmp/runs" -name metrics.jsonl | sort | xargs md5sum; }
compare > "$tmp/first.log" 2>&1
rc=$?
check "the first invocation succeeds" test $rc = 0
[ $rc = 0 ] || { tail -n 20 "$tmp/first.log"; finish; }

# The models: FLASH and FLASH-Quad always; the baselines where ./train has their presets.
models=(FLASH FLASH-Quad)
for arch in transformer++:Transformer++ performer:Performer combiner:Combiner; do
  ./train --help 2>&1 | grep -q -- "${arch%%:*}-tiny" && models+=("${arch#*:}")
done
md=$tmp/results/results.md
# rows of the table of T = $1 whose model cell is exactly $2
rows() { awk -v T="## T = $1 " -v m="| $2 |" 'index($0, "## T = ") == 1 { on = index($0, T) == 1 }
                                             on && index($0, m) == 1 { n++ } END { print n + 0 }' "$md"; }
for T in 16 32; do
  for m in "${models[@]}"; do check "one row of $m at T = $T" test "$(rows $T "$m")" = 1; done
  check "T = $T has ${#models[@]} auto-regressive rows" \
    test "$(awk -v T="## T = $T " 'index($0, "## T = ") == 1 { on = index($0, T) == 1 } on && / \| ar \| /' "$md" | wc -l)" \
    = "${#models[@]}"
done
check "the masked-LM row at T = 32" test "$(rows 32 "FLASH (masked LM)")" = 1
check "every auto-regressive row's speed-up is a ratio, 'not reached', or names the missing Transformer++" \
  test "$(grep -E ' \| ar \| ' "$md" | grep -cvE '\| ([0-9]+\.[0-9]{2}×|not reached|n/a \(no Transformer\+\+ run\)) \|$')" = 0
for png in val_vs_time step_time_vs_T; do
  check "$png.png is a PNG" bash -c "head -c 4 '$tmp/results/$png.png' | grep -q PNG"
done
runs=$(( 2 * ${#models[@]} + 1 ))
check "every run's metrics end with the whole-set validation" \
  test "$(grep -l whole_val_loss "$tmp"/runs/T*/*/metrics.jsonl | wc -l)" = "$runs"

# Again: everything reused, nothing rewritten.
before=$(sums)
compare > "$tmp/second.log" 2>&1
check "the second invocation succeeds" test $? = 0
check "the second invocation trains nothing" grep -q "runs: 0 trained, 0 resumed, $runs reused" "$tmp/second.log"
check "the second invocation rewrites no metrics" test "$before" = "$(sums)"

# A deleted run is trained alone; a run stopped before its end is resumed from its checkpoint.
rm -rf "$tmp/runs/T16/flash"
quad=$tmp/runs/T32/flash-quad
read -r -a cmd < "$quad/compare_args.txt"
rm -rf "$quad"; mkdir -p "$quad"; echo "${cmd[*]}" > "$quad/compare_args.txt"
"${cmd[@]}" --stop-after 2 > "$quad/train.log" 2>&1
check "the stopped run has no whole-set record" bash -c "! grep -q whole_val_loss '$quad/metrics.jsonl'"
compare > "$tmp/third.log" 2>&1
check "the third invocation succeeds" test $? = 0
check "the third invocation trains the deleted run, resumes the stopped one, reuses the rest" \
  grep -q "runs: 1 trained, 1 resumed, $((runs - 2)) reused" "$tmp/third.log"
check "the resumed run ends with the whole-set validation" grep -q whole_val_loss "$quad/metrics.jsonl"
[ "$failed" = 0 ] || tail -n 20 "$tmp/third.log"
finish
