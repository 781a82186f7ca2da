#!/usr/bin/env bash
# eval/reports/CAS_VS_RAG.md: CAS against RAG through the service's query path, on stories260K. One command, from the
# repository root:
#   eval/cas_vs_rag.sh            # DOCS=24 PROBES=32 EPOCHS=2 DATA=/tmp/cas-vs-rag (env overrides)
# 1. DOCS documents stories260K writes itself from BOS (temperature 0.8, seeds 1, 2, …; ones under 700 characters are
#    skipped), into a collection with 64-token retrieval chunks;
# 2. `cas collection train` with a reduced recipe (PROBES probes per chunk, EPOCHS epochs instead of 128 × 4) — the
#    distractor mixing and rotation of the default; rerunning reuses what is trained;
# 3. `cas eval collection` → eval/reports/CAS_VS_RAG.md and its PNGs.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCS=${DOCS:-24}; PROBES=${PROBES:-32}; EPOCHS=${EPOCHS:-2}; DATA=${DATA:-/tmp/cas-vs-rag}
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
./cas collection ls --data-dir "$DATA" | grep -q '^stories\b' || ./cas collection create stories --data-dir "$DATA" --retrieval-chunk-tokens 64
./cas collection add stories --data-dir "$DATA" --resource "dir:$DATA/docs"
start=$(date +%s)
out=$(./cas collection train stories --data-dir "$DATA" --probes-per-chunk "$PROBES" --epochs "$EPOCHS")
echo "$out"
# Keep the summary of the run that trained (a rerun with nothing to train prints trained=0).
if ! grep -q ' trained=0 ' <<<" $out "; then echo "$out train_wall_s=$(( $(date +%s) - start ))" > "$DATA/train.txt"; fi
./cas eval collection --collection stories --data-dir "$DATA" --report eval/reports "$@"
{ echo; echo "**Training** (\`cas collection train stories --probes-per-chunk $PROBES --epochs $EPOCHS\`, the other settings default):"; echo
  echo '```'; cat "$DATA/train.txt" 2>/dev/null || echo "(trained by an earlier run; its summary is gone)"; echo '```'; } >> eval/reports/CAS_VS_RAG.md
