#!/usr/bin/env bash
# The converged track's evidence (docs/evidence.md), part by part, each timed:
#
#   bash local/evidence.sh                       # every part below, in order
#   bash local/evidence.sh --parts main          # M0 -> M1 -> M2 -> M3 on the converged track
#   bash local/evidence.sh --parts control       # the one-round control, its rate and schedule tuned on dev
#   bash local/evidence.sh --parts retune        # ILT's Feedback again at the control's chosen rate
#   bash local/evidence.sh --parts lid           # Focus with language-ID embeddings vs the main Focus
#   bash local/evidence.sh --parts ablation      # the seven ordered subsets of the rounds (run_ablation.sh)
#   bash local/evidence.sh --parts experts       # LoRA language experts (a)-(e) (local/experts_compare.sh)
#   bash local/evidence.sh --parts fix           # Fix with the incoming model competing; Fix without pseudo-labels
#   bash local/evidence.sh --parts knowledge     # Feedback and Fix without the knowledge sets (knowledge_compare.sh)
#   bash local/evidence.sh --parts tables        # the comparisons with intervals -> exp_conv/evidence/*.md
#
# main     `run.sh --track converged --stop-stage 6`: corpus, M0, knowledge sets, the three rounds with
#          early stopping (conf_converged/), voted pseudo-labels, every model on test, test2, test3.
#          Its rounds (and the ablation's, and knowledge's second chain) let only trained
#          checkpoints compete (select.include_start false), as the toolkit did when
#          docs/evidence.md's tables were measured: part fix gives the default's after.
# control  ONE round (conf_converged_control/feedback.yaml: Feedback's scope and rank on the union of the
#          three rounds' data), at most as many steps as the three rounds ran together (read from their
#          train logs), the same dev checks and patience; trained at each of --control-lrs, the run of
#          the lowest best dev WER wins; at its rate, the control again with its schedule (warm-up,
#          linear decay to 0) over each of --control-steps instead; the lowest best dev WER of those is
#          the control (only it is decoded on the test sets). ILT's rates and schedules are its rounds'
#          hand-set ones: the control gets a grid around them. Pinned to include_start false, as the rounds.
# retune   the main Feedback again from M1 at the control's chosen learning rate (everything else the
#          main one's) -> $exp/retune/M2, and again with its schedule over the control's budget less
#          Focus's steps -> $exp/retune_steps<N>/M2, and that run to its cap without early stopping ->
#          $exp/retune_steps<N>.full/M2: whether the control's lead is its rate, its schedule or the patience.
# ablation run_ablation.sh --track converged: each subset reuses the main chain's models where its
#          rounds begin that chain.
# lid      the main chain's Focus again with train.lid_embeddings: true (paper 3.2.3; docs/lid.md), the
#          rest identical (seed, data, steps, early stopping), -> $exp/lid_on/M1, decoded on the test sets
#          with the language given, and both M1 with the language detected (-o language=detect);
#          "off" is the main chain's M1.
# experts  local/experts_compare.sh --track converged: (a) is the main chain's Focus, (b)-(e) trained
#          and decoded from M0 (conf_converged/experts.yaml, distill.yaml).
# fix      the main Fix again from M2 with select.include_start true (the default since: the incoming
#          M2 competes at step 0) -> $exp/fix_start, M3_start; and without its pseudo-labelled source
#          (local/fix_without_pseudo.sh, the main Fix's settings) -> $exp/fix_nopseudo, M3_nopseudo.
# knowledge local/knowledge_compare.sh --track converged: Feedback and Fix again from M1 without the
#          stage-2 sets (and that chain's own vote) -> $exp/knowledge_off.
# tables   exp_conv/evidence/{rounds,control,lid,ablation}.md: paired bootstrap intervals (ilt compare),
#          pooled over the three test sets and on each alone.
# Each part skips the work a finished run of it left (the template's step markers).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

parts="main control retune lid ablation experts fix knowledge tables"
control_lrs="1.0e-4 2.0e-4 1.0e-3"  # the control's learning-rate grid, YAML floats: each rate one of ILT's rounds uses
control_steps=96   # then, at the chosen rate, schedules over fewer steps (linear decay to 0 there): Feedback's cap
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

as_measured=all:select.include_start=false  # the rounds as measured (see part main above)
steps_of() { python local/evidence_tables.py steps "${@/#/$exp/}"; }  # steps_of ROUND...: steps they ran, summed

part_main() {
  bash run.sh --track converged --stop-stage 6 --round-overrides "$as_measured"
}

control_run() {  # control_run LR STEPS DIR STAGE: the control at LR, schedule over STEPS, run.sh stage STAGE
  bash run.sh --track converged --stage "$4" --stop-stage "$4" --rounds feedback --conf-dir conf_converged_control \
    --round-overrides "feedback:train.lr=$1 feedback:train.max_steps=$2 $as_measured" \
    --exp-dir "$exp/control/$3" --reuse-exp "$exp"
}

part_control() {
  local steps runs=() lr cap best name
  steps=$(steps_of focus feedback fix)
  export ILT_PSEUDO_CUTS=$exp/pseudo/cuts.jsonl.gz  # the main chain's voted labels: part of Fix's data
  for lr in $control_lrs; do  # 1. the rate, over the whole budget
    log "control at lr $lr: schedule over $steps steps (the three rounds together)"
    control_run "$lr" "$steps" "lr$lr" 4  # train
    runs+=("$exp/control/lr$lr/feedback")
  done
  best=$(python local/evidence_tables.py best-dev "${runs[@]}")
  name=${best%/feedback}; name=${name##*/}; lr=${name#lr}
  log "control: lr $lr has the lowest best dev WER of the rates"
  runs=("$best")
  for cap in $control_steps; do  # 2. at that rate, schedules that decay to 0 sooner
    [ "$cap" -lt "$steps" ] || continue
    log "control at lr $lr: schedule over $cap steps"
    control_run "$lr" "$cap" "lr$lr.steps$cap" 4
    runs+=("$exp/control/lr$lr.steps$cap/feedback")
  done
  best=$(python local/evidence_tables.py best-dev "${runs[@]}")
  name=${best%/feedback}; name=${name##*/}
  cap=$steps; [[ $name != *.steps* ]] || cap=${name##*.steps}
  log "control: $name has the lowest best dev WER; decoding it on $sets"
  ln -sfn "$name" "$exp/control/chosen"
  control_run "$lr" "$cap" "$name" 6  # evaluate on the test sets
}

part_retune() {  # ILT's Feedback again from M1 at the control's chosen rate: is the gap the rate, the schedule?
  local name lr budget cap dir overrides
  [ -L "$exp/control/chosen" ] || { log "ERROR: $exp/control/chosen: run --parts control first"; exit 1; }
  name=$(readlink "$exp/control/chosen"); lr=${name#lr}; lr=${lr%%.steps*}
  # the control's budget less the steps Focus ran (no Fix after: it changed nothing, see part fix)
  budget=$(($(steps_of focus feedback fix) - $(steps_of focus)))
  # Feedback's own cap; that budget; that budget run to its end (no early stopping)
  for cap in own "$budget" "$budget.full"; do
    dir=$exp/retune overrides="feedback:train.lr=$lr $as_measured"
    if [ "$cap" != own ]; then dir=$exp/retune_steps$cap overrides+=" feedback:train.max_steps=${cap%.full}"; fi
    if [[ $cap == *.full ]]; then overrides+=" feedback:select.patience=null"; fi
    log "retune: the main Feedback again from M1 at lr $lr (the control's), step cap: $cap"
    bash run.sh --track converged --exp-dir "$dir" --rounds focus,feedback --stage 3 --stop-stage 3 --reuse-exp "$exp"
    bash run.sh --track converged --exp-dir "$dir" --rounds focus,feedback --stage 4 --stop-stage 4 \
      --round-overrides "$overrides"
    decode_sets "$dir/M2" "$dir/decode/M2"
  done
}

decode_sets() {  # decode_sets MODEL OUT [ARGS...]: MODEL on each test set -> OUT/<set>, once
  local model=$1 out=$2 set; shift 2
  for set in $sets; do
    [ -f "$out/$set/scores.json" ] || ilt evaluate --model "$model" \
      --cuts "data_conv/manifests/mlc_slm_cuts_$set.jsonl.gz" --decode-config conf_converged/decode.yaml \
      --out "$out/$set" --group-by accent "$@"
  done
}

part_lid() {
  local dir=$exp/lid_on manifests=data_conv/manifests
  export ILT_DATA_DIR=data_conv
  [ -f "$dir/M1/config.json" ] || ilt round --config conf_converged/focus.yaml -o train.lid_embeddings=true \
    --model "$exp/M0" --out "$dir/focus" --merged-out "$dir/M1" \
    --dev "$manifests/mlc_slm_cuts_dev.jsonl.gz" --decode-config conf_converged/decode.yaml
  decode_sets "$dir/M1" "$dir/decode/M1"
  # the language detected by the model itself
  decode_sets "$dir/M1" "$dir/decode/on-detect" -o language=detect
  decode_sets "$exp/M1" "$dir/decode/off-detect" -o language=detect
}

part_ablation() {
  bash run_ablation.sh --track converged --round-overrides "$as_measured"
}

part_experts() {
  bash local/experts_compare.sh --track converged
}

part_knowledge() {
  bash local/knowledge_compare.sh --track converged --round-overrides "$as_measured"
}

part_fix() {
  local manifests=data_conv/manifests
  export ILT_DATA_DIR=data_conv ILT_EXP_DIR=$exp
  [ -f "$exp/M3_start/config.json" ] || ilt round --config conf_converged/fix.yaml -o select.include_start=true \
    --model "$exp/M2" --out "$exp/fix_start" --merged-out "$exp/M3_start" \
    --dev "$manifests/mlc_slm_cuts_dev.jsonl.gz" --decode-config conf_converged/decode.yaml
  decode_sets "$exp/M3_start" "$exp/decode/M3_start"
  bash local/fix_without_pseudo.sh --exp-dir "$exp" --data-dir data_conv --conf-dir conf_converged \
    --sets "$sets" --overrides "${as_measured#all:}"
}

part_tables() {
  local out=$exp/evidence systems=() pairs=() cfg long dir base
  for i in 0 1 2 3; do systems+=(--system "M$i=$exp/decode/M$i/{set}"); done
  python local/evidence_tables.py table --sets "$sets" "${systems[@]}" --pair M1-M0 --pair M2-M1 \
    --pair M3-M2 --pair M3-M0 --title "ILT rounds (converged track)" --out "$out/rounds.md"
  if [ -d "$exp/control/chosen" ]; then
    python local/evidence_tables.py table --sets "$sets" --system "M3=$exp/decode/M3/{set}" \
      --system "control=$exp/control/chosen/decode/M1/{set}" --system "M0=$exp/decode/M0/{set}" \
      --pair control-M0 --pair M3-control --title "ILT (M3) vs the one-round control" --out "$out/control.md"
  fi
  if [ -d "$exp/retune/decode/M2" ]; then
    long=(); for dir in "$exp"/retune_steps*/decode/M2; do
      [ -d "$dir" ] || continue; cfg=${dir%/decode/M2}; cfg=M2_retune${cfg##*/retune}
      # against the run it differs from by one thing: the shorter cap's, or (.full) its patient twin
      [[ $cfg == *.full ]] && base=${cfg%.full} || base=M2_retune
      long+=(--system "$cfg=$dir/{set}" --pair "$cfg-$base" --pair "$cfg-control")
    done
    python local/evidence_tables.py table --sets "$sets" --system "M2=$exp/decode/M2/{set}" \
      --system "control=$exp/control/chosen/decode/M1/{set}" --system "M2_retune=$exp/retune/decode/M2/{set}" \
      --pair M2_retune-M2 --pair M2_retune-control "${long[@]}" \
      --title "Feedback at the control's learning rate (M2_retune) vs at its own (M2) and vs the control" \
      --out "$out/retune.md"
  fi
  if [ -d "$exp/lid_on/decode/M1" ]; then
    python local/evidence_tables.py table --sets "$sets" --system "off=$exp/decode/M1/{set}" \
      --system "on=$exp/lid_on/decode/M1/{set}" --pair on-off \
      --title "Focus with language-ID embeddings (on) vs without (off)" --out "$out/lid.md"
  fi
  if [ -d "$exp/lid_on/decode/on-detect" ]; then
    python local/evidence_tables.py table --sets "$sets" --system "off=$exp/lid_on/decode/off-detect/{set}" \
      --system "on=$exp/lid_on/decode/on-detect/{set}" --system "given=$exp/decode/M1/{set}" --pair on-off \
      --pair off-given --title "Language detected: Focus with language-ID embeddings (on) vs without (off)" \
      --out "$out/lid_detect.md"
  fi
  if [ -d "$exp/experts_cmp/decode/e-experts-detect" ]; then
    systems=(--system "a=$exp/experts_cmp/decode/a-shared/{set}")
    for cfg in b-experts c-fused d-distill e-experts-detect; do
      systems+=(--system "${cfg%%-*}=$exp/experts_cmp/decode/$cfg/{set}"); pairs+=(--pair "${cfg%%-*}-a")
    done
    python local/evidence_tables.py table --sets "$sets" "${systems[@]}" "${pairs[@]}" \
      --title "LoRA language experts (b-e) vs one shared LoRA (a)" --out "$out/experts.md"
    pairs=()
  fi
  if [ -d "$exp/decode/M3_nopseudo" ]; then
    python local/evidence_tables.py table --sets "$sets" --system "M2=$exp/decode/M2/{set}" \
      --system "M3=$exp/decode/M3/{set}" --system "start=$exp/decode/M3_start/{set}" \
      --system "nopseudo=$exp/decode/M3_nopseudo/{set}" --pair start-M3 --pair start-M2 --pair M3-nopseudo \
      --title "Fix: the incoming model competing (start) and without pseudo-labels (nopseudo)" --out "$out/fix.md"
  fi
  if [ -d "$exp/knowledge_cmp/without/M3" ]; then
    python local/evidence_tables.py table --sets "$sets" --system "M2=$exp/decode/M2/{set}" \
      --system "M3=$exp/decode/M3/{set}" --system "M2_off=$exp/knowledge_cmp/without/M2/{set}" \
      --system "M3_off=$exp/knowledge_cmp/without/M3/{set}" --pair M2-M2_off --pair M3-M3_off \
      --title "With the knowledge sets vs without (M2: Feedback, M3: Fix)" --out "$out/knowledge.md"
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
    main|control|retune|lid|ablation|experts|fix|knowledge|tables) log "part $part"; timed "$part" "part_$part" ;;
    *) log "ERROR: --parts: '$part' is not main, control, retune, lid, ablation, experts, fix, knowledge or tables"; exit 1 ;;
  esac
done
