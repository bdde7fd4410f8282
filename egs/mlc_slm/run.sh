#!/usr/bin/env bash
# Iterative LoRA Training on MLC-SLM (M0 -> M1 -> M2 -> M3), Kaldi/icefall style.
#
#   bash run.sh --corpus-dir /data/MLC-SLM --base-model /models/whisper-large-v3
#   bash run.sh --stage 3 --stop-stage 5          # the three ILT rounds only
#   bash run.sh --rounds focus,fix --exp-dir exp/focus+fix   # an ablation
#   bash run.sh --ngpu 8                           # training/decoding under accelerate launch
#
# Stages (each one or a few `ilt` commands, each writes a .done marker):
#   0  prepare the MLC-SLM manifests
#   1  decode and score the base model M0
#   2  prepare the extra corpora for the Feedback/Fix knowledge tasks
#   3  Focus    (round config $conf_dir/focus.yaml)    -> next model in the chain
#   4  Feedback (round config $conf_dir/feedback.yaml) -> next model
#   5  Fix      (round config $conf_dir/fix.yaml)      -> next model
#   6  decode and score every model of the chain, write the report
# Paths are relative to the directory you run it from; the mini recipe reuses it.
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ilt_root=$(cd "$recipe_dir/../.." && pwd)

stage=0
stop_stage=6
corpus_dir=              # official MLC-SLM layout: <split>/<Language>/<Accent>/<conv>.{wav,txt}
base_model=              # M0: a local Hugging Face Whisper directory
extra_corpora=           # third-party corpora for stage 2: "NAME:DIR[:OPTIONS] ...", NAME from `ilt plugins`
conf_dir=$ilt_root/conf       # round and decoding YAML: focus.yaml feedback.yaml fix.yaml decode.yaml
data_dir=data
exp_dir=exp
rounds=focus,feedback,fix
dev_set=dev
test_sets="dev test"
splits="train dev test"  # corpus splits prepared in stage 0
ngpu=1
force=false

. "$ilt_root/tools/parse_options.sh"

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (run.sh:${BASH_LINENO[0]}) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

manifests=$data_dir/manifests
markers=$exp_dir/.done
mkdir -p "$markers"

# A stage runs unless its marker exists (re-run with --force true to redo it).
todo() { [ "$force" = true ] || [ ! -f "$markers/$1" ]; }
done_() { touch "$markers/$1"; }
need() { [ -e "$1" ] || die "missing $1: run stage $2 first (bash run.sh --stage $2 --stop-stage $2)"; }

if [ "$ngpu" -gt 1 ]; then
  ilt_run=(accelerate launch --num_processes "$ngpu" -m ilt.cli)
else
  ilt_run=(ilt)
fi

# The chain: M0 is the base model; the i-th round of --rounds produces M<i>.
IFS=, read -r -a chain <<< "$rounds"
for r in "${chain[@]}"; do
  case "$r" in focus|feedback|fix) ;; *) die "--rounds: unknown round '$r' (focus, feedback, fix)";; esac
done
model_of() {  # model_of ROUND -> "M<i>", or M0 when ROUND is empty
  local i=0
  for r in "${chain[@]}"; do i=$((i + 1)); [ "$r" = "$1" ] && { echo "M$i"; return; }; done
  echo M0
}
previous_of() {  # previous_of ROUND -> the model this round starts from
  local prev=M0 i=0
  for r in "${chain[@]}"; do i=$((i + 1)); [ "$r" = "$1" ] && { echo "$prev"; return; }; prev="M$i"; done
}
model_dir() { if [ "$1" = M0 ]; then echo "$base_model"; else echo "$exp_dir/$1"; fi; }

decode_and_score() {  # decode_and_score MODEL_NAME
  local name=$1 dir
  dir=$(model_dir "$1")
  need "$dir/config.json" "$([ "$name" = M0 ] && echo "1 (set --base-model)" || echo 3-5)"
  for set in $test_sets; do
    need "$manifests/mlc_slm_cuts_$set.jsonl.gz" 0
    "${ilt_run[@]}" decode --model "$dir" --cuts "$manifests/mlc_slm_cuts_$set.jsonl.gz" \
      --conf "$conf_dir/decode.yaml" --out "$exp_dir/decode/$name/$set"
    ilt score --ref "$manifests/mlc_slm_cuts_$set.jsonl.gz" --hyp "$exp_dir/decode/$name/$set/hyps.jsonl" \
      --out "$exp_dir/decode/$name/$set" --group-by accent
  done
}

run_round() {  # run_round STAGE ROUND
  local stage_no=$1 round=$2 prev out
  if [[ ",$rounds," != *",$round,"* ]]; then log "Stage $stage_no: $round not in --rounds $rounds, skipped"; return; fi
  prev=$(previous_of "$round"); out=$(model_of "$round")
  todo "stage$stage_no.$round" || { log "Stage $stage_no: $round done already ($exp_dir/$out)"; return; }
  log "Stage $stage_no: $round: $prev -> $out"
  need "$(model_dir "$prev")/config.json" "$([ "$prev" = M0 ] && echo "1 (set --base-model)" || echo "the round before $round")"
  need "$manifests/mlc_slm_cuts_$dev_set.jsonl.gz" 0
  "${ilt_run[@]}" train --config "$conf_dir/$round.yaml" --model "$(model_dir "$prev")" \
    --dev "$manifests/mlc_slm_cuts_$dev_set.jsonl.gz" --decode-config "$conf_dir/decode.yaml" \
    --out "$exp_dir/$round"
  ilt merge --model "$(model_dir "$prev")" --adapter "$exp_dir/$round/best" --out "$exp_dir/$out" --overwrite
  done_ "stage$stage_no.$round"
}

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: prepare MLC-SLM manifests from $corpus_dir"
  if todo stage0; then
    [ -n "$corpus_dir" ] || die "stage 0 needs --corpus-dir"
    split_opts=(); for s in $splits; do split_opts+=(--splits "$s"); done
    ilt prepare mlc-slm "$corpus_dir" "$manifests" "${split_opts[@]}" $([ "$force" = true ] && echo --force)
    done_ stage0
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: decode and score the base model M0 ($base_model)"
  [ -n "$base_model" ] || die "stage 1 needs --base-model"
  if todo stage1; then
    decode_and_score M0
    done_ stage1
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: prepare the extra corpora for the knowledge tasks: ${extra_corpora:-none}"
  if todo stage2; then
    for spec in $extra_corpora; do
      IFS=: read -r name dir opts <<< "$spec"
      # shellcheck disable=SC2086  # opts are extra `ilt prepare NAME` options
      ilt prepare "$name" "$dir" "$data_dir/extra" ${opts//,/ }
    done
    done_ stage2
  fi
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: Focus"
  run_round 3 focus
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: Feedback"
  run_round 4 feedback
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: Fix"
  run_round 5 fix
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: decode and score M0..M${#chain[@]}, write the report"
  if todo stage6; then
    models=(M0)
    for r in "${chain[@]}"; do models+=("$(model_of "$r")"); done
    for m in "${models[@]}"; do
      if [ "$m" = M0 ] && [ -f "$markers/stage1" ]; then continue; fi
      decode_and_score "$m"
    done
    for set in $test_sets; do
      ilt report "$exp_dir" --split "$set" --models "$(IFS=,; echo "${models[*]}")"
    done
    done_ stage6
  fi
fi
log "Done: stages $stage..$stop_stage"
