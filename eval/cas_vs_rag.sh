#!/usr/bin/env bash
# eval/reports/CAS_VS_RAG.md: CAS against RAG through the service's query path, on stories260K. One command, from the
# repository root:
#   eval/cas_vs_rag.sh            # DOCS=24 PROBES=32 EPOCHS=2 MONO=on DATA=/tmp/cas-vs-rag (env overrides);
#                                 # further arguments go to `cas eval collection`
# 1. DOCS documents stories260K writes itself from BOS (temperature 0.8, seeds 1, 2, …; ones under 700 characters are
#    skipped), into a collection with 64-token retrieval chunks;
# 2. `cas collection train` with a reduced recipe (PROBES probes per chunk, EPOCHS epochs instead of 128 × 4) — the
#    distractor mixing and rotation of the default; rerunning reuses what is trained;
# 3. (MONO=on) the monolithic baseline: a collection "stories-mono" whose one document is all documents joined, trained
#    by the same command with the same recipe into one cartridge of 4 × 20 = 80 slots (the KV size of cas at D = 4);
# 4. `cas eval collection` → eval/reports/CAS_VS_RAG.md and its PNGs.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCS=${DOCS:-24}; PROBES=${PROBES:-32}; EPOCHS=${EPOCHS:-2}; DATA=${DATA:-/tmp/cas-vs-rag}; MONO=${MONO:-on}; MONO_P=${MONO_P:-80}
mkdir -p "$DATA/docs"
n=$(ls "$DATA/docs" | wc -l); seed=1
while [ "$n" -lt "$DOCS" ]; do
  f="$DATA/docs/story$(printf %03d $seed).txt"
  if [ ! -f "$f" ]; then
    ./cas generate --prompt "" --temperature 0.8 --seed "$seed" --max-tokens 400 > "$f.tmp"
    if [ "$(wc -c < "$f.tmp")" -ge 700 ]; then mv "$f.tmp" "$f"; n=$((n + 1)); else rm "$f.tmp"; fi
  fi
  seed=$((seed + 1))
done
echo "documents: $(ls "$DATA/docs" | wc -l) in $DATA/docs" >&2
collections=$(./cas collection ls --data-dir "$DATA")
grep -q '^stories\b' <<<"$collections" || ./cas collection create stories --data-dir "$DATA" --retrieval-chunk-tokens 64
./cas collection add stories --data-dir "$DATA" --resource "dir:$DATA/docs"
# train NAME SUMMARY_FILE [options]: keeps the summary of the run that trained (a rerun with nothing to train prints trained=0).
train() {
  local name=$1 file=$2; shift 2
  local start out; start=$(date +%s)
  out=$(./cas collection train "$name" --data-dir "$DATA" --probes-per-chunk "$PROBES" --epochs "$EPOCHS" "$@")
  echo "$out"
  if ! grep -q ' trained=0 ' <<<" $out "; then echo "$out train_wall_s=$(( $(date +%s) - start ))" > "$file"; fi
}
train stories "$DATA/train.txt"
mono_args=()
if [ "$MONO" = on ]; then
  if ! grep -q '^stories-mono\b' <<<"$collections"; then
    mkdir -p "$DATA/mono"
    for f in "$DATA"/docs/*.txt; do cat "$f"; printf '\n\n'; done > "$DATA/mono/all.txt"
    ./cas collection create stories-mono --data-dir "$DATA" --retrieval-chunk-tokens 64
    ./cas collection add stories-mono --data-dir "$DATA" --resource "text:$DATA/mono/all.txt"
  fi
  tokens=$(./cas collection status stories-mono --data-dir "$DATA" | grep -o ' tokens=[0-9]*' | head -1 | cut -d= -f2)
  # p = floor(tokens / compression) = MONO_P
  train stories-mono "$DATA/train_mono.txt" --compression "$(awk -v t="$tokens" -v p="$MONO_P" 'BEGIN { printf "%.6f", t / (p + 0.5) }')"
  mono_args=(--mono-collection stories-mono)
fi
./cas eval collection --collection stories --data-dir "$DATA" --report eval/reports "${mono_args[@]}" "$@"
{ echo; echo "**Training** (\`cas collection train NAME --probes-per-chunk $PROBES --epochs $EPOCHS\`, the other settings default; stories-mono with \`--compression\` chosen for p = $MONO_P):"; echo
  echo '```'; cat "$DATA/train.txt" 2>/dev/null || echo "(stories trained by an earlier run; its summary is gone)"
  [ "$MONO" = on ] && { cat "$DATA/train_mono.txt" 2>/dev/null || echo "(stories-mono trained by an earlier run; its summary is gone)"; }
  echo '```'; } >> eval/reports/CAS_VS_RAG.md
