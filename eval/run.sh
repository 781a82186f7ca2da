#!/usr/bin/env bash
# Regenerates eval/reports/REPORT.md and its plots (eval/reports/*.png) from nothing, with ./cas, awk and the solution's
# eval/CasReports (ScottPlot) for the plots.
# Run from the repository root:   eval/run.sh
# Needs ../shared/models/stories260K (model + tokenizer).
# About 8-10 minutes on 2 cores. Intermediate files (documents, cartridges, logs) go to eval/work/ (not committed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f CasService.sln ] || { echo "run.sh: cannot find the repository root" >&2; exit 1; }

MODEL=../shared/models/stories260K/stories260K.bin
TOK=../shared/models/stories260K/tok512.bin
for f in "$MODEL" "$TOK"; do [ -f "$f" ] || { echo "run.sh: $f is missing (see ../shared/models/README.md)" >&2; exit 1; }; done

# ---- settings (all results in eval/reports/REPORT.md come from these)
DOC_SEEDS="1 2 3 4 5 6"        # documents: the model's own stories, ./cas generate --temperature 0.8 --seed k
DOC_TOKENS=360                 # tokens per document (one chunk: chunks are at most 400 tokens)
PS="32 64"                     # cartridge sizes
TRAIN_SEED=1                   # probe data and example order of training (cas train's default)
EVAL_SEED=1000                 # held-out probes (cas eval's default; disjoint sentence starts and openers anyway)
HELD_OUT=48                    # held-out probes per document
DISTILL=(--objective distill --probes-per-chunk 256 --epochs 4 --batch 8 --lr 0.05)    # 128 steps
NTP=(--objective ntp --steps 128 --batch 1 --lr 0.05)                                     # same steps and peak lr
NTP_GENTLE=(--objective ntp --steps 64 --batch 1 --lr 0.005)                              # a milder NTP recipe
COMMON=(--model "$MODEL" --tokenizer "$TOK" --init first-k --seed "$TRAIN_SEED" --held-out 0 --checkpoint-every 0)

W=eval/work
OUT=eval/reports
mkdir -p "$OUT"
# REUSE_WORK=1 eval/run.sh only redoes the tables, plots and report from an earlier run's eval/work/.
REUSE=${REUSE_WORK:-0}
if [ "$REUSE" != 1 ]; then rm -rf "$W"; mkdir -p "$W"; fi
start=$(date +%s)
log() { printf '[%4ds] %s\n' $(( $(date +%s) - start )) "$*" >&2; }
kv() { sed -n "s/^$2=//p" "$1" | tail -1; }

./cas --help >/dev/null   # build once, up front
dotnet build eval/CasReports -c Release -nologo -v q >/dev/null   # the plots (ScottPlot)
reports() { dotnet eval/CasReports/bin/Release/net10.0/CasReports.dll "$@"; }
seeds=($DOC_SEEDS)

if [ "$REUSE" != 1 ]; then
for k in $DOC_SEEDS; do
  doc="$W/doc$k.txt"
  ./cas generate --model "$MODEL" --tokenizer "$TOK" --prompt "" --temperature 0.8 --seed "$k" --max-tokens "$DOC_TOKENS" > "$doc"
  for p in $PS; do
    for kind in distill ntp ntp_gentle; do
      case $kind in distill) args=("${DISTILL[@]}");; ntp) args=("${NTP[@]}");; ntp_gentle) args=("${NTP_GENTLE[@]}");; esac
      c="$W/doc$k.$kind$p"
      log "doc $k: train $kind p=$p"
      ./cas train "${COMMON[@]}" "${args[@]}" --data "$doc" --tokens "$p" --out "$c.safetensors" --log "$c.csv" > "$c.train" 2> "$c.train.err"
      log "doc $k: eval $kind p=$p"
      ./cas eval --model "$MODEL" --tokenizer "$TOK" --cartridge "$c.safetensors" --data "$doc" --seed "$EVAL_SEED" \
        --probes-per-chunk "$HELD_OUT" > "$c.eval" 2> "$c.eval.err"
    done
  done
done

# ---- composition: each document's distilled p=32 cartridge with the next document's as a distractor
for i in "${!seeds[@]}"; do
  k=${seeds[$i]}; j=${seeds[$(( (i + 1) % ${#seeds[@]} ))]}
  gold="$W/doc$k.distill32.safetensors"; other="$W/doc$j.distill32.safetensors"
  for mode in concat rerotate; do
    log "doc $k: composition $mode (gold + distractor doc $j, both orders)"
    ./cas eval --model "$MODEL" --tokenizer "$TOK" --cartridge "$gold" --cartridge "$other" --compose $mode --data "$W/doc$k.txt" \
      --seed "$EVAL_SEED" --probes-per-chunk "$HELD_OUT" > "$W/doc$k.comp_gold_first_$mode.eval" 2>/dev/null
    ./cas eval --model "$MODEL" --tokenizer "$TOK" --cartridge "$other" --cartridge "$gold" --compose $mode --data "$W/doc$k.txt" \
      --seed "$EVAL_SEED" --probes-per-chunk "$HELD_OUT" > "$W/doc$k.comp_gold_last_$mode.eval" 2>/dev/null
  done
done
fi

# ---- results table: doc p method ppl kl slots chunk compression
R="$W/results.tsv"
printf 'doc\tp\tmethod\tppl\tkl\tslots\tchunk\tcompression\n' > "$R"
for k in $DOC_SEEDS; do
  for p in $PS; do
    e="$W/doc$k.distill$p.eval"
    for cond in none truncated icl; do
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "$p" "$cond" "$(kv "$e" ppl_$cond)" "$(kv "$e" kl_$cond)" "$(kv "$e" kv_slots_$cond)" "$(kv "$e" chunk_tokens)" "$(kv "$e" compression)" >> "$R"
    done
    for kind in distill ntp ntp_gentle; do
      e="$W/doc$k.$kind$p.eval"
      # Every eval of a document sees the same held-out probes: its no-context and ICL figures must agree.
      [ "$(kv "$e" ppl_none)" = "$(kv "$W/doc$k.distill$p.eval" ppl_none)" ] || { echo "run.sh: held-out sets differ for doc $k" >&2; exit 1; }
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "$p" "$kind" "$(kv "$e" ppl_cartridge)" "$(kv "$e" kl_cartridge)" "$(kv "$e" kv_slots_cartridge)" "$(kv "$e" chunk_tokens)" "$(kv "$e" compression)" >> "$R"
    done
  done
done
C="$W/composition.tsv"
printf 'doc\tmode\torder\tppl\tkl\tgap\n' > "$C"
for k in $DOC_SEEDS; do
  for mode in concat rerotate; do for order in gold_first gold_last; do
    e="$W/doc$k.comp_${order}_$mode.eval"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "$mode" "$order" "$(kv "$e" ppl_cartridge)" "$(kv "$e" kl_cartridge)" "$(kv "$e" cartridge_gap_closed)" >> "$C"
  done; done
done

# ---- plots (eval/CasReports, ScottPlot)
reports heldout-ppl --results "$R" --doc-tokens "$DOC_TOKENS" --out "$OUT/heldout_ppl.png"
reports training-curves --work "$W" --docs "$(echo $DOC_SEEDS | tr ' ' ,)" --out "$OUT/training_curves.png"

# ---- the report
elapsed=$(( $(date +%s) - start ))
f4() { awk -v x="$1" 'BEGIN { printf "%.3f", x }'; }
mean() { # method p -> mean ppl
  awk -F'\t' -v m="$1" -v p="$2" 'NR > 1 && $3 == m && $2 == p { s += $4; n++ } END { printf "%.4f", s / n }' "$R"
}
meankl() { awk -F'\t' -v m="$1" -v p="$2" 'NR > 1 && $3 == m && $2 == p { s += $5; n++ } END { printf "%.4f", s / n }' "$R"; }
gap_of_means() { awk -v a="$(mean none "$2")" -v b="$(mean icl "$2")" -v x="$(mean "$1" "$2")" 'BEGIN { printf "%.1f%%", 100 * (a - x) / (a - b) }'; }
mean_gap() { # mean over documents of the per-document gap closed
  awk -F'\t' -v m="$1" -v p="$2" 'NR > 1 && $2 == p { v[$1 FS $3] = $4; d[$1] = 1 }
    END { for (k in d) { s += (v[k FS "none"] - v[k FS m]) / (v[k FS "none"] - v[k FS "icl"]); n++ } printf "%.1f%%", 100 * s / n }' "$R"
}
min_gap() {
  awk -F'\t' -v m="$1" -v p="$2" 'NR > 1 && $2 == p { v[$1 FS $3] = $4; d[$1] = 1 }
    END { lo = 1e9; for (k in d) { g = (v[k FS "none"] - v[k FS m]) / (v[k FS "none"] - v[k FS "icl"]); if (g < lo) lo = g } printf "%.1f%%", 100 * lo }' "$R"
}
compression() { awk -F'\t' -v p="$1" 'NR > 1 && $2 == p && $3 == "distill" { s += $8; n++ } END { printf "%.1f", s / n }' "$R"; }
chunk_mean() { awk -F'\t' 'NR > 1 && $3 == "distill" { s += $7; n++ } END { printf "%.0f", s / n }' "$R"; }
aim() { # reached when the p = 32 (≥ 8x) distilled cartridge closes ≥ 90% of the gap of the mean perplexities
  awk -v a="$(mean none 32)" -v b="$(mean icl 32)" -v x="$(mean distill 32)" -v c="$(compression 32)" \
    'BEGIN { g = (a - x) / (a - b); if (g >= 0.9 && c >= 8) printf "reached at p = 32 (%.1fx): %.1f%%", c, 100 * g; else printf "NOT reached at p = 32 (%.1fx: %.1f%%)", c, 100 * g }'
}
beats() { # p -> yes/no: distill mean ppl below none, truncated, ntp and ntp_gentle
  awk -v d="$(mean distill "$1")" -v a="$(mean none "$1")" -v t="$(mean truncated "$1")" -v n="$(mean ntp "$1")" -v g="$(mean ntp_gentle "$1")" \
    'BEGIN { print (d < a && d < t && d < n && d < g) ? "yes" : "NO" }'
}

curve() { # kind p column first|last -> mean over documents of that step's value
  local k f vals=""
  for k in $DOC_SEEDS; do
    f="$W/doc$k.$1$2.csv"
    if [ "$4" = first ]; then vals+="$(sed -n 2p "$f" | cut -d, -f"$3") "; else vals+="$(tail -1 "$f" | cut -d, -f"$3") "; fi
  done
  echo "$vals" | awk '{ for (i = 1; i <= NF; i++) s += $i; printf "%.3f", s / NF }'
}
comp_same() { # mode -> whether both orders gave the same ppl on every document (to float summation order: 1e-5 relative)
  awk -F'\t' -v m="$1" 'NR > 1 && $2 == m { v[$1 FS $3] = $4; d[$1] = 1 }
    END { worst = 0; for (k in d) { r = v[k FS "gold_first"] / v[k FS "gold_last"] - 1; if (r < 0) r = -r; if (r > worst) worst = r }
          if (worst < 1e-5) printf "the same perplexities (relative difference at most %.0e: float summation order only", worst; else printf "different perplexities (relative difference up to %.2g", worst }' "$C"
}
comp_avg() { awk -F'\t' -v m="$1" 'NR > 1 && $2 == m { s += $6; n++ } END { printf "%.1f%%", 100 * s / n }' "$C"; }

{
cat <<EOF
# Cartridges on stories260K: held-out evaluation

Generated by \`eval/run.sh\` (one command from the repository root; ${elapsed} s on this machine) — do not edit by hand.
Model: stories260K (llama2.c, 260K parameters, context 512) with tok512. Everything below is recomputed by the script.

## Setup

- **Documents**: ${#seeds[@]} stories the model samples itself (\`./cas generate --prompt "" --temperature 0.8 --seed k --max-tokens ${DOC_TOKENS}\`,
  k = ${DOC_SEEDS// /, }), ≈$(chunk_mean) tokens each, so each document is one chunk (chunks are at most 400 tokens). stories260K
  only knows simple children's stories, so its own stories are documents it can read; it has never seen these particular ones.
- **Cartridges** (\`cas train\`, first-k initialisation, 1 frozen slot, AdamW, linear decay): p = 32 and p = 64 slots.
  - *distill*: context distillation on probes of the document: ${DISTILL[*]} (teacher = the model with the
    document in context continuing a probe for up to 64 tokens at temperature 0.7; top-20 targets cut at 0.99).
  - *NTP (same recipe)*: next-token prediction on the document's own tokens, same step count and peak lr: ${NTP[*]}.
  - *NTP (gentle)*: a milder NTP recipe, added after the first one visibly over-fitted: ${NTP_GENTLE[*]}.
- **Held-out evaluation** (\`cas eval --seed ${EVAL_SEED} --probes-per-chunk ${HELD_OUT}\`): ${HELD_OUT} probes per document from the held-out split
  (sentence starts and openers that training never uses; different seed), teacher continuations as above.
  Conditions: *no context* (BOS + student tokens), *truncated* (BOS + the document's first p−1 tokens: the same KV budget
  as the cartridge), *ICL* (BOS + the whole document: what the teacher saw), *cartridge*.
  Perplexity = exp(mean NLL of the actual next tokens over the target positions); KL = mean over target positions of
  Σ_j p_j (log p_j − log q_j) on the teacher's kept top-k support. Gap closed = (ppl_none − ppl_x) / (ppl_none − ppl_icl).

## Results

Mean over the ${#seeds[@]} documents (compression = document tokens / p):

| | p = 32 | p = 64 |
|---|---|---|
| compression | $(compression 32)x | $(compression 64)x |
| held-out ppl, no context | $(mean none 32) | $(mean none 64) |
| held-out ppl, truncated context (p tokens) | $(mean truncated 32) | $(mean truncated 64) |
| held-out ppl, ICL (whole document) | $(mean icl 32) | $(mean icl 64) |
| **held-out ppl, cartridge (distill)** | **$(mean distill 32)** | **$(mean distill 64)** |
| held-out ppl, cartridge (NTP, gentle) | $(mean ntp_gentle 32) | $(mean ntp_gentle 64) |
| held-out ppl, cartridge (NTP, same recipe) | $(mean ntp 32) | $(mean ntp 64) |
| KL to teacher: none / truncated / ICL | $(meankl none 32) / $(meankl truncated 32) / $(meankl icl 32) | $(meankl none 64) / $(meankl truncated 64) / $(meankl icl 64) |
| KL to teacher: distill / NTP gentle / NTP | $(meankl distill 32) / $(meankl ntp_gentle 32) / $(meankl ntp 32) | $(meankl distill 64) / $(meankl ntp_gentle 64) / $(meankl ntp 64) |
| gap closed by distill (of mean ppl) | **$(gap_of_means distill 32)** | **$(gap_of_means distill 64)** |
| gap closed by distill (mean of per-document; worst document) | $(mean_gap distill 32); $(min_gap distill 32) | $(mean_gap distill 64); $(min_gap distill 64) |
| gap closed by truncated context | $(gap_of_means truncated 32) | $(gap_of_means truncated 64) |
| gap closed by NTP gentle / same recipe | $(gap_of_means ntp_gentle 32) / $(gap_of_means ntp 32) | $(gap_of_means ntp_gentle 64) / $(gap_of_means ntp 64) |
| distill beats no context, truncated and both NTP on mean ppl | $(beats 32) | $(beats 64) |

The aim (close at least 90% of the no-context → ICL gap at 8x compression or more) is $(aim). Gaps above 100% mean the
cartridge predicted the held-out continuations slightly better than the teacher did with the document in context:
perplexity is measured on the tokens the teacher sampled, and a cartridge is not bound to the teacher's exact distribution
(its KL to the teacher is small but not zero). Limits of this evaluation: a 260K-parameter model, documents of one chunk
that the model itself wrote (in-distribution, simple vocabulary), probes and continuations generated by the same teacher
recipe as the training data (held out by sentence start, opener and seed, not by kind of question).

![held-out perplexity](heldout_ppl.png)

### Per document

Held-out perplexity (KL to the teacher in parentheses); gap = share of the no-context → ICL gap the distilled cartridge closes.

| doc | p | tokens | compression | no context | truncated | ICL | distill | NTP gentle | NTP | gap (distill) |
|---|---|---|---|---|---|---|---|---|---|---|
EOF
awk -F'\t' 'NR > 1 { v[$1 FS $2 FS $3] = sprintf("%.3f (%.3f)", $4, $5); p[$1 FS $2 FS $3] = $4; c[$1 FS $2] = $7; x[$1 FS $2] = $8; key[$1 FS $2] = 1 }
  END {
    n = 0; for (k in key) keys[++n] = k
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) { split(keys[i], a, FS); split(keys[j], b, FS); if (a[1] + 0 > b[1] + 0 || (a[1] == b[1] && a[2] + 0 > b[2] + 0)) { t = keys[i]; keys[i] = keys[j]; keys[j] = t } }
    for (i = 1; i <= n; i++) {
      k = keys[i]; split(k, a, FS)
      g = (p[k FS "none"] - p[k FS "distill"]) / (p[k FS "none"] - p[k FS "icl"])
      printf "| %s | %s | %d | %.1fx | %s | %s | %s | **%s** | %s | %s | %.1f%% |\n", a[1], a[2], c[k], x[k], v[k FS "none"], v[k FS "truncated"], v[k FS "icl"], v[k FS "distill"], v[k FS "ntp_gentle"], v[k FS "ntp"], 100 * g
    }
  }' "$R"
cat <<EOF

### Training curves

KL to the teacher per step for distillation (the logged loss minus the batch's teacher entropy), and the next-token loss
on the document for NTP. Distillation's KL falls from $(curve distill 32 3 first) to $(curve distill 32 3 last) nats/token at p = 32
(first and last step, mean over documents; $(curve distill 64 3 first) → $(curve distill 64 3 last) at p = 64). NTP with the same recipe
drives the document's next-token loss from $(curve ntp 32 2 first) to $(curve ntp 32 2 last) by memorising its text, and its held-out
perplexity explodes ($(mean ntp 32) at p = 32): a cartridge trained to continue the document from its start has not
learned to behave like the model reading it. The gentle recipe barely moves ($(curve ntp_gentle 32 2 first) → $(curve ntp_gentle 32 2 last))
and stays near the no-context baseline.

![training curves](training_curves.png)

## Self-study end to end

\`cas synthesize\` → \`cas train\` → \`cas eval\` on held-out self-study conversations: see [SELFSTUDY.md](SELFSTUDY.md)
(regenerated by \`eval/selfstudy_e2e.sh\`).

## Composition (two cartridges)

Each document's distilled p = 32 cartridge (*gold*) loaded together with the next document's (*distractor*), evaluated on
the gold document's held-out probes (truncated/ICL baselines as above). *concat* is what \`cas generate\` and serving do
(keys keep their trained positions); *rerotate* rotates the second cartridge's keys by +32 (\`cas eval --compose rerotate\`).
See [COMPOSITION.md](../COMPOSITION.md).

| mode | order | mean held-out ppl | mean KL | mean gap closed |
|---|---|---|---|---|
EOF
awk -F'\t' 'NR > 1 { k = $2 FS $3; s[k] += $4; kl[k] += $5; g[k] += $6; n[k]++ }
  END {
    split("concat rerotate", ms, " "); split("gold_first gold_last", os, " ")
    for (i = 1; i <= 2; i++) for (j = 1; j <= 2; j++) { k = ms[i] FS os[j]; o = os[j]; gsub("_", " ", o)
      printf "| %s | %s | %.4f | %.4f | %.1f%% |\n", ms[i], o, s[k] / n[k], kl[k] / n[k], 100 * g[k] / n[k] }
  }' "$C"
cat <<EOF
| (gold alone, for reference) | | $(mean distill 32) | $(meankl distill 32) | $(mean_gap distill 32) |
| (no cartridge, for reference) | | $(mean none 32) | $(meankl none 32) | 0% |

These cartridges were trained alone; none was trained next to a distractor, which is what CAS does to make cartridges
compose. With *concat*, the two orders give $(comp_same concat); attention does not see slot order when keys are not
moved). With *rerotate* the order matters: the cartridge loaded last keeps exactly the query distances it was trained
with, the first one's are shifted in both modes, so gold-last gains and gold-first loses; averaged over the two orders,
rerotate closes $(comp_avg rerotate) of the gap and concat $(comp_avg concat).

## Reproduce

\`\`\`
eval/run.sh        # from the repository root; writes eval/reports/REPORT.md, heldout_ppl.png, training_curves.png
\`\`\`
Intermediate files (documents, cartridges, per-step CSV logs, every \`cas eval\` output) are left in \`eval/work/\`.
EOF
} > "$OUT/REPORT.md"
log "done: $OUT/REPORT.md, $OUT/heldout_ppl.png, $OUT/training_curves.png"
