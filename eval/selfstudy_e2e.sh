#!/usr/bin/env bash
# End to end on stories260K: cas synthesize -> cas train -> cas eval, self-study cartridge vs NTP vs no context.
# Writes eval/reports/SELFSTUDY.md. Run from anywhere: bash eval/selfstudy_e2e.sh   (about 2-4 minutes on 2 cores)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="${CAS_EVAL_WORK:-$root/.tmp/selfstudy}"
rm -rf "$work"; mkdir -p "$work"
cas=./cas
docs=(11 12 13)           # seeds of the model's own stories used as documents
p=32
rows=""
sum_none=0; sum_ss=0; sum_ntp=0; sum_icl=0
for s in "${docs[@]}"; do
  d="$work/doc$s"; mkdir -p "$d"
  $cas generate --prompt "" --max-tokens 350 --temperature 0.8 --seed "$s" > "$d/doc.txt"
  # Training conversations (seed 1) and held-out conversations (seed 99: other chunks windows, prompts and samples).
  $cas synthesize --resource "text:$d/doc.txt" --out "$d/train.casds" --conversations 256 --min-chunk-tokens 150 --chunk-tokens 190 \
      --max-answer-tokens 64 --max-user-tokens 32 --concurrency 32 --seed 1 > "$d/synth.txt" 2>"$d/synth.err"
  $cas synthesize --resource "text:$d/doc.txt" --out "$d/held.casds" --conversations 32 --min-chunk-tokens 150 --chunk-tokens 190 \
      --max-answer-tokens 64 --max-user-tokens 32 --concurrency 32 --seed 99 > /dev/null 2>>"$d/synth.err"
  $cas train --data "$d/train.casds" --document "$d/doc.txt" --out "$d/ss.safetensors" --tokens $p --steps 150 --batch 8 \
      > "$d/train_ss.txt" 2>/dev/null
  $cas train --data "$d/doc.txt" --objective ntp --out "$d/ntp.safetensors" --tokens $p --steps 150 --batch 1 \
      > "$d/train_ntp.txt" 2>/dev/null
  $cas eval --cartridge "$d/ss.safetensors" --data "$d/held.casds" > "$d/eval_ss.txt" 2>/dev/null
  $cas eval --cartridge "$d/ntp.safetensors" --data "$d/held.casds" > "$d/eval_ntp.txt" 2>/dev/null
  get() { grep -m1 "^$1=" "$2" | cut -d= -f2; }
  none=$(get ppl_none "$d/eval_ss.txt"); icl=$(get ppl_icl "$d/eval_ss.txt")
  ss=$(get ppl_cartridge "$d/eval_ss.txt"); ntp=$(get ppl_cartridge "$d/eval_ntp.txt")
  rows+="| story seed $s | $(get chunk_tokens "$d/eval_ss.txt") | $none | $icl | $ss | $ntp | $(get cartridge_gap_closed "$d/eval_ss.txt") |"$'\n'
  sum_none=$(echo "$sum_none + $none" | bc -l); sum_icl=$(echo "$sum_icl + $icl" | bc -l)
  sum_ss=$(echo "$sum_ss + $ss" | bc -l); sum_ntp=$(echo "$sum_ntp + $ntp" | bc -l)
done
n=${#docs[@]}
avg() { printf '%.3f' "$(echo "$1 / $n" | bc -l)"; }
{
  echo "# Self-study end to end (stories260K)"
  echo
  echo "Regenerate with \`bash eval/selfstudy_e2e.sh\`. For each document (a story the model sampled itself):"
  echo "\`cas synthesize\` makes 256 training conversations (seed 1) and 32 held-out ones (seed 99) with base-model"
  echo "framing; \`cas train\` trains a p = $p cartridge on the training conversations (distillation, 150 steps,"
  echo "batch 8) and, as the baseline, on the raw document by next-token prediction (NTP); \`cas eval\` scores the held-out"
  echo "conversations' answers. Perplexity of the teacher's answer tokens (lower is better):"
  echo
  echo "| document | chunk tokens | no context | ICL (teacher's context) | self-study cartridge | NTP cartridge | gap closed (self-study) |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  printf '%s' "$rows"
  echo "| **average** | | $(avg $sum_none) | $(avg $sum_icl) | $(avg $sum_ss) | $(avg $sum_ntp) | |"
  echo
  echo "ICL is the model with the teacher's exact context in front (the chunk in the base-model framing agent B read),"
  echo "so its KL to the teacher is 0; gap closed = (none − cartridge) / (none − ICL) on perplexity."
} > eval/reports/SELFSTUDY.md
cat eval/reports/SELFSTUDY.md
