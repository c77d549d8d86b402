#!/bin/sh
# bench_tokenizer.sh - encode throughput of inferd's tokenizer beside Hugging
# Face `tokenizers` (npm package, Rust core), single thread, same corpus, same
# tokenizer.json, in one run.
#   bench_tokenizer.sh BENCH_TOKENIZER_BINARY [SECONDS]
# Needs INFERD_SHARED; the HF side needs node and ORACLE_HOME (default
# /root/.cache/inferd-oracle, see ../shared/oracle) and is skipped without them.
set -eu
bench=$1
secs=${2:-3}
: "${INFERD_SHARED:?INFERD_SHARED must point at the shared models/goldens directory}"
oracle=${ORACLE_HOME:-/root/.cache/inferd-oracle}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

"$bench" --write-corpus "$tmp/corpus.txt" 2097152
have_hf=0
if command -v node >/dev/null 2>&1 && [ -d "$oracle/node_modules/tokenizers" ]; then
    have_hf=1
else
    echo "note: node or $oracle/node_modules/tokenizers missing: HF comparison skipped"
fi

field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<EOT
$1
EOT
}

for mode in whole lines; do
for pair in qwen3:models/qwen3-tiny-random llama3:models/llama3-tiny-random; do
    name="${pair%%:*} ($mode)"
    dir=$INFERD_SHARED/${pair#*:}
    ours=$("$bench" "$dir" "$tmp/corpus.txt" "$secs" "$mode")
    echo "$name $ours"
    if [ $have_hf = 1 ]; then
        hf=$(RAYON_NUM_THREADS=1 RAYON_RS_NUM_CPUS=1 node "$here/bench_tokenizer.mjs" \
                 "$oracle/node_modules" "$dir/tokenizer.json" "$tmp/corpus.txt" "$secs" "$mode")
        echo "$name $hf"
        a=$(field "$ours" mean_mb_s); b=$(field "$hf" mean_mb_s)
        ta=$(field "$ours" tokens); tb=$(field "$hf" tokens)
        awk -v n="$name" -v a="$a" -v b="$b" -v ta="$ta" -v tb="$tb" 'BEGIN {
            printf "%s: inferd %.2f MB/s, HF tokenizers %.2f MB/s, ratio %.2fx; tokens %s vs %s (%s)\n",
                   n, a, b, a / b, ta, tb, (ta == tb ? "same" : "DIFFERENT") }'
    fi
done
done
