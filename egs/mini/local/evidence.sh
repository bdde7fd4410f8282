#!/usr/bin/env bash
# The converged track's evidence (docs/evidence.md), part by part, each timed:
#
#   bash local/evidence.sh                       # every part below, in order
#   bash local/evidence.sh --parts main          # M0 -> M1 -> M2 -> M3 on the converged track
#   bash local/evidence.sh --parts control       # the one-round control, its learning rate tuned on dev
#   bash local/evidence.sh --parts lid           # Focus with language-ID embeddings vs the main Focus
#   bash local/evidence.sh --parts ablation      # the seven ordered subsets of the rounds (run_ablation.sh)
#   bash local/evidence.sh --parts tables        # the comparisons with intervals -> exp_conv/evidence/*.md
#
# main     `run.sh --track converged --stop-stage 6`: corpus, M0, knowledge sets, the three rounds with
#          early stopping (conf_converged/), voted pseudo-labels, every model on test, test2, test3.
# control  ONE round (conf_converged_control/feedback.yaml: Feedback's scope and rank on the union of the
#          three rounds' data), at most as many steps as the three rounds ran together (read from their
#          train logs), the same dev checks and patience; trained at each of --control-lrs, the run of
#          the lowest best dev WER is the control (only it is decoded on the test sets). ILT's rates are
#          its rounds' hand-set ones: the control gets a grid around them.
# ablation run_ablation.sh --track converged: each subset reuses the main chain's models where its
#          rounds begin that chain.
# lid      the main chain's Focus again with train.lid_embeddings: true (paper 3.2.3; docs/lid.md), the
#          rest identical (seed, data, steps, early stopping), -> $exp/lid_on/M1, decoded on the test sets
#          with the language given; "off" is the main chain's M1.
# tables   exp_conv/evidence/{rounds,control,lid,ablation}.md: paired bootstrap intervals (ilt compare),
#          pooled over the three test sets and on each alone.
# Each part skips the work a finished run of it left (the template's step markers).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

parts="main control lid ablation tables"
control_lrs="1.0e-4 3.0e-4 1.0e-3"  # the control's learning-rate grid, YAML floats (ILT's rounds: 1e-3, 2e-4, 1e-4)
exp=exp_conv
sets="test test2 test3"

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (evidence.sh:${BASH_LINENO[0]}) $*" >&2; }
timed() {  # timed PART CMD...: run, and log the part's wall time to $exp/evidence/times.tsv
  local start=$SECONDS
  "${@:2}"
  mkdir -p "$exp/evidence"
  printf '%s\t%s\t%s\n' "$1" "$((SECONDS - start))" "$(date '+%Y-%m-%d %H:%M')" >> "$exp/evidence/times.tsv"
  log "$1: $((SECONDS - start)) s"
}

part_main() {
  bash run.sh --track converged --stop-stage 6
}

control_run() {  # control_run LR STEPS STAGE: the control at LR for at most STEPS, run.sh stage STAGE
  bash run.sh --track converged --stage "$3" --stop-stage "$3" --rounds feedback --conf-dir conf_converged_control \
    --round-overrides "feedback:train.lr=$1 feedback:train.max_steps=$2" \
    --exp-dir "$exp/control/lr$1" --reuse-exp "$exp"
}

part_control() {
  local steps runs=() lr best
  steps=$(python local/evidence_tables.py steps "$exp/focus" "$exp/feedback" "$exp/fix")
  export ILT_PSEUDO_CUTS=$exp/pseudo/cuts.jsonl.gz  # the main chain's voted labels: part of Fix's data
  for lr in $control_lrs; do
    log "control at lr $lr: at most $steps steps (the three rounds together)"
    control_run "$lr" "$steps" 4  # train
    runs+=("$exp/control/lr$lr/feedback")
  done
  best=$(python local/evidence_tables.py best-dev "${runs[@]}")
  lr=${best%/feedback}; lr=${lr##*/lr}
  log "control: lr $lr has the lowest best dev WER; decoding it on $sets"
  ln -sfn "lr$lr" "$exp/control/chosen"
  control_run "$lr" "$steps" 6  # evaluate on the test sets
}

part_lid() {
  local dir=$exp/lid_on manifests=data_conv/manifests set
  export ILT_DATA_DIR=data_conv
  [ -f "$dir/M1/config.json" ] || ilt round --config conf_converged/focus.yaml -o train.lid_embeddings=true \
    --model "$exp/M0" --out "$dir/focus" --merged-out "$dir/M1" \
    --dev "$manifests/mlc_slm_cuts_dev.jsonl.gz" --decode-config conf_converged/decode.yaml
  for set in $sets; do
    [ -f "$dir/decode/M1/$set/scores.json" ] || ilt evaluate --model "$dir/M1" \
      --cuts "$manifests/mlc_slm_cuts_$set.jsonl.gz" --decode-config conf_converged/decode.yaml \
      --out "$dir/decode/M1/$set" --group-by accent
  done
}

part_ablation() {
  bash run_ablation.sh --track converged
}

part_tables() {
  local out=$exp/evidence systems=() pairs=() cfg
  for i in 0 1 2 3; do systems+=(--system "M$i=$exp/decode/M$i/{set}"); done
  python local/evidence_tables.py table --sets "$sets" "${systems[@]}" --pair M1-M0 --pair M2-M1 \
    --pair M3-M2 --pair M3-M0 --title "ILT rounds (converged track)" --out "$out/rounds.md"
  if [ -d "$exp/control/chosen" ]; then
    python local/evidence_tables.py table --sets "$sets" --system "M3=$exp/decode/M3/{set}" \
      --system "control=$exp/control/chosen/decode/M1/{set}" --system "M0=$exp/decode/M0/{set}" \
      --pair control-M0 --pair M3-control --title "ILT (M3) vs the one-round control" --out "$out/control.md"
  fi
  if [ -d "$exp/lid_on/decode/M1" ]; then
    python local/evidence_tables.py table --sets "$sets" --system "off=$exp/decode/M1/{set}" \
      --system "on=$exp/lid_on/decode/M1/{set}" --pair on-off \
      --title "Focus with language-ID embeddings (on) vs without (off)" --out "$out/lid.md"
  fi
  if [ -d "$exp/ablation" ]; then
    systems=(--system "all=$exp/decode/M3/{set}")
    for cfg in focus feedback fix focus+feedback feedback+fix focus+fix; do
      n=$(tr '+' '\n' <<< "$cfg" | wc -l)
      systems+=(--system "$cfg=$exp/ablation/$cfg/decode/M$n/{set}"); pairs+=(--pair "all-$cfg")
    done
    python local/evidence_tables.py table --sets "$sets" "${systems[@]}" "${pairs[@]}" \
      --title "All three rounds vs each other subset" --out "$out/ablation.md"
  fi
}

for part in $parts; do
  case $part in
    main|control|lid|ablation|tables) log "part $part"; timed "$part" "part_$part" ;;
    *) log "ERROR: --parts: '$part' is not main, control, lid, ablation or tables"; exit 1 ;;
  esac
done
