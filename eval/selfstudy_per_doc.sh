#!/usr/bin/env bash
# Self-study data per document through CAS training (`cas collection train --data-source selfstudy`), on stories260K:
# how much of the no-context -> ICL perplexity gap each document's cartridge closes on HELD-OUT self-study
# conversations (another seed), for each recipe below. Writes eval/reports/SELFSTUDY_PER_DOC.md.
#
#   bash eval/selfstudy_per_doc.sh            # every recipe not measured yet (results kept in .tmp/ssdoc/results.tsv)
#   bash eval/selfstudy_per_doc.sh NAME ...   # only these recipes (then the report is rewritten from all results)
#   bash eval/selfstudy_per_doc.sh --report   # only rewrite the report's tables from the results kept
#   CAS=... to run another cas binary (default ./cas, built when stale); RESET=1 to forget earlier results.
#
# Per recipe: a fresh data folder, a collection of the 3 documents (stories the model sampled itself, seeds 11-13),
# `cas collection train` with the recipe's flags (self-study synthesis per document + distractor-mixed training),
# `cas store export` of each cartridge and `cas eval --cartridge C --data held.casds`: perplexity of the teacher's answer
# tokens with no context, with the teacher's exact context (ICL) and with the cartridge; gap closed =
# (none - cartridge) / (none - ICL). The held-out conversations (32 per document, seed 99) are made by `cas synthesize`
# with the chunk and answer sizes the training synthesis derives (the same plan), so they differ from training only
# in seed. About 3-8 minutes per recipe on 2 idle cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f CasService.sln ] || { echo "selfstudy_per_doc.sh: cannot find the repository root" >&2; exit 1; }
[ -f ../shared/models/stories260K/stories260K.bin ] || { echo "selfstudy_per_doc.sh: ../shared/models/stories260K is missing" >&2; exit 1; }
CAS=${CAS:-./cas}
W=${WORK:-.tmp/ssdoc}
mkdir -p "$W"
[ "${RESET:-0}" = 1 ] && rm -f "$W/results.tsv"
touch "$W/results.tsv"
docs=(11 12 13)

# name | what it changes | cas collection train flags
recipes=(
  "defaults|the defaults before tuning: 1 conversation per token, 4 epochs, lr 0.05, p = tokens/20 (floor 16)|--epochs 4"
  "c8|p = 43 (compression 8), 4 epochs|--compression 8 --epochs 4"
  "lr01|lr 0.1, 4 epochs|--epochs 4 --lr 0.1"
  "e8|8 epochs (the new default)|--epochs 8"
  "e8-iso|8 epochs, no distractors (P_iso = 1)|--epochs 8 --p-iso 1"
  "c05-e8|0.5 conversations per token, 8 epochs (the steps of 4 epochs at 1 per token, half the synthesis)|--conversations-per-token 0.5 --epochs 8"
  "c2-e4|2 conversations per token, 4 epochs (the steps of e8, twice the data)|--conversations-per-token 2 --epochs 4"
)

if [ "${1:-}" != --report ]; then
$CAS --help > /dev/null   # build once, up front

# ---- documents and held-out conversations (made once)
for s in "${docs[@]}"; do
  d="$W/doc$s"; mkdir -p "$d"
  [ -s "$d/story$s.txt" ] || $CAS generate --prompt "" --max-tokens 350 --temperature 0.8 --seed "$s" > "$d/story$s.txt"
  if [ ! -s "$d/held.casds" ]; then
    rm -f "$d/held.casds"
    $CAS synthesize --resource "text:$d/story$s.txt" --out "$d/held.casds" --conversations 32 --seed 99 --concurrency 32 \
      > /dev/null 2> "$d/held.err"
  fi
done

fi

run_recipe() {
  local name=$1 flags=$2
  local dd="$W/$name"
  rm -rf "$dd"; mkdir -p "$dd/data" "$W/cache"
  # Every recipe's data folder shares one self-study cache: recipes that differ only in training reuse the datasets
  # (each is named by the model, document, self-study settings and seed, so other settings make their own).
  ln -s "$(cd "$W/cache" && pwd)" "$dd/data/selfstudy"
  $CAS collection create ss --data-dir "$dd/data" > /dev/null
  local res=()
  for s in "${docs[@]}"; do res+=(--resource "text:$W/doc$s/story$s.txt"); done
  $CAS collection add ss --data-dir "$dd/data" "${res[@]}" > /dev/null 2>&1
  # shellcheck disable=SC2086
  $CAS collection train ss --data-dir "$dd/data" --data-source selfstudy $flags > "$dd/train.txt" 2> "$dd/train.err"
  local wall; wall=$(grep -o 'wall_s=[0-9.]*' "$dd/train.txt" | cut -d= -f2)
  $CAS store ls --data-dir "$dd/data" > "$dd/store.txt"
  for s in "${docs[@]}"; do
    local id; id=$(grep "story$s.txt" "$dd/store.txt" | head -1 | cut -d' ' -f1)
    [ -n "$id" ] || { echo "no cartridge for story$s in $dd/store.txt" >&2; exit 1; }
    $CAS store export "$id" --data-dir "$dd/data" --out "$dd/story$s.safetensors" > /dev/null
    $CAS eval --cartridge "$dd/story$s.safetensors" --data "$W/doc$s/held.casds" > "$dd/eval$s.txt" 2> /dev/null
    local get; get() { grep -m1 "^$1=" "$dd/eval$s.txt" | cut -d= -f2; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$s" "$(get p)" "$(get ppl_none)" "$(get ppl_icl)" "$(get ppl_cartridge)" \
      "$(get cartridge_gap_closed)" "$wall" "$(grep -o '([0-9]* made now' "$dd/train.err" | tr -dc '0-9\n' | awk '{ s += $1 } END { print s + 0 }')" >> "$W/results.tsv"
  done
  rm -rf "$dd/data/jobs"
}

want=("$@")
for r in "${recipes[@]}"; do
  [ "${1:-}" = --report ] && break
  IFS='|' read -r name what flags <<< "$r"
  if [ ${#want[@]} -gt 0 ]; then [[ " ${want[*]} " == *" $name "* ]] || continue
  elif grep -q "^$name	" "$W/results.tsv"; then continue; fi
  sed -i "/^$name	/d" "$W/results.tsv"
  echo "recipe $name: $flags" >&2
  run_recipe "$name" "$flags"
done

# ---- the report
{
  echo "| recipe | what it changes | flags | p | gap closed story 11 | story 12 | story 13 | **mean** | conversations made | train wall s |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for r in "${recipes[@]}"; do
    IFS='|' read -r name what flags <<< "$r"
    grep -q "^$name	" "$W/results.tsv" || continue
    awk -F'\t' -v n="$name" -v w="$what" -v f="$flags" '
      $1 == n { g[$2] = sprintf("%.3f", $7); sum += $7; k++; p = $3; wall = $8; made = $9 }
      END { printf "| %s | %s | `%s` | %s | %s | %s | %s | **%.3f** | %s | %s |\n", n, w, f, p, g[11], g[12], g[13], sum / k, made, wall }' "$W/results.tsv"
  done
  echo
  echo "Perplexities per document (none / ICL / cartridge):"
  echo
  echo "| recipe | story | ppl none | ppl ICL | ppl cartridge | gap closed |"
  echo "| --- | --- | --- | --- | --- | --- |"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %.3f |\n", $1, $2, $4, $5, $6, $7 }' "$W/results.tsv"
} > "$W/table.md"
# The report keeps its written parts; the measured tables go between its markers.
R=eval/reports/SELFSTUDY_PER_DOC.md
if [ -f "$R" ] && grep -q '^<!-- table -->' "$R"; then
  awk -v t="$W/table.md" '
    /^<!-- table -->/ { print; while ((getline l < t) > 0) print l; skip = 1; next }
    /^<!-- \/table -->/ { skip = 0 }
    !skip' "$R" > "$R.tmp" && mv "$R.tmp" "$R"
else
  { echo "<!-- table -->"; cat "$W/table.md"; echo "<!-- /table -->"; } > "$R"
fi
cat "$W/table.md"
