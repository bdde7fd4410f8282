#!/usr/bin/env bash
# Iterative LoRA Training on the manifests it is given: stages 1-6, the same for every corpus.
# A corpus recipe (egs/<corpus>/run.sh) prepares Lhotse cut manifests in its own stages, then
# calls this script (docs/new-corpus.md):
#
#   bash ../TEMPLATE/ilt.sh --base-model exp/M0 \
#     --dev-cuts data/manifests/x_cuts_dev.jsonl.gz \
#     --test-sets "test=data/manifests/x_cuts_test.jsonl.gz eval=data/manifests/x_cuts_eval.jsonl.gz"
#
# Stages (one `ilt` command per step; each step writes $exp_dir/.done/<step> after it succeeds
# and is skipped when run again, unless --force true):
#   1  evaluate M0 on every test set: decode, submission file, score     -> decode/M0/<set>
#   2  prepare the extra corpora of the knowledge tasks (ilt prepare)     -> $extra_dir
#   3  Focus    (ilt round: train $conf_dir/focus.yaml, merge)    -> M<i>, i its place in --rounds
#   4  Feedback (ilt round: train $conf_dir/feedback.yaml, merge) -> M<i>
#   5  Fix      (ilt round: train $conf_dir/fix.yaml, merge)      -> M<i>
#   6  evaluate every model of the chain M0..Mn, `ilt report` for each scored set
# Every evaluated set gets a submission file decode/<model>/<set>/text (Kaldi style, one
# "<utterance-id> <hypothesis>" per line); a set without reference text (an evaluation set)
# is decoded but not scored. Paths are relative to the directory you run it from.
set -euo pipefail

# Upper case: not options (tools/parse_options.sh turns every lower-case variable into one).
ILT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
COMMAND=$(printf '%q ' bash "$0" "$@")

stage=1
stop_stage=6
base_model=        # M0: a local Hugging Face model directory
train_cuts=        # if set, every round trains on these cuts instead of its YAML's task.data mix
dev_cuts=          # each round keeps its best checkpoint on these cuts
test_sets=         # "NAME=CUTS ...": evaluated into decode/<model>/NAME by stages 1 and 6
extra_corpora=     # stage 2: "NAME:DIR[:OPTION,OPTION...] ...", NAME a corpus of `ilt plugins`
extra_dir=data/extra
conf_dir=$ILT_ROOT/conf   # focus.yaml feedback.yaml fix.yaml decode.yaml
exp_dir=exp
rounds=focus,feedback,fix # any of them, in this order
reuse_exp=         # a finished experiment with the same base model, conf and test sets: link
                   # its M0 decodes and the models of the longest prefix of --rounds it trained
group_by=accent    # rows of the score tables: accent or language
ngpu=1             # > 1: rounds and decoding run under accelerate launch
force=false        # true: redo finished steps (and reuse nothing)

. "$ILT_ROOT/tools/parse_options.sh"

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (ilt.sh:${BASH_LINENO[0]}) $*" >&2; }
die() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (ilt.sh:${BASH_LINENO[0]}) ERROR: $*" >&2; exit 1; }
need() { [ -e "$1" ] || die "missing $1: $2"; }  # need PATH HINT
[ $# -eq 0 ] || die "unexpected argument '$1' (options are --name value)"

# The chain: M0 is --base-model; the i-th round of --rounds turns M<i-1> into M<i>.
IFS=, read -r -a chain <<< "$rounds"
stage_of() { case "$1" in focus) echo 3;; feedback) echo 4;; fix) echo 5;; *) echo 0;; esac; }
last=0
for r in "${chain[@]}"; do
  n=$(stage_of "$r")
  [ "$n" -gt 0 ] || die "--rounds: unknown round '$r' (focus, feedback, fix)"
  [ "$n" -gt "$last" ] || die "--rounds $rounds: give each round once, in the order focus,feedback,fix"
  last=$n
done
for spec in $test_sets; do [[ $spec == ?*=?* ]] || die "--test-sets: '$spec' is not NAME=CUTS"; done

markers=$exp_dir/.done
mkdir -p "$markers"
echo "cd $(printf '%q' "$PWD") && $COMMAND" >> "$exp_dir/commands.sh"  # replayable
todo() { [ "$force" = true ] || [ ! -f "$markers/$1" ]; }
done_() { touch "$markers/$1"; }

if [ "$ngpu" -gt 1 ]; then
  ilt_run=(accelerate launch --num_processes "$ngpu" -m ilt.cli)
else
  ilt_run=(ilt)
fi

index_of() {  # index_of ROUND -> i (its model is M<i>), 0 when not in --rounds
  local i=0 r
  for r in "${chain[@]}"; do i=$((i + 1)); [ "$r" = "$1" ] && { echo $i; return; }; done
  echo 0
}
key_of() {  # key_of i -> M0, M1.focus, M2.focus+feedback: the model and the rounds that made it
  local k=("${chain[@]:0:$1}")
  if [ "$1" -eq 0 ]; then echo M0; else echo "M$1.$(IFS=+; echo "${k[*]}")"; fi
}
model_dir() { if [ "$1" -eq 0 ]; then echo "$base_model"; else echo "$exp_dir/M$1"; fi; }

# reuse KEY PATH...: when --reuse-exp finished step KEY, link its PATHs into $exp_dir (a path
# already there for real is never replaced) and mark KEY done here.
reuse() {
  local key=$1 p; shift
  [ -n "$reuse_exp" ] && [ "$force" != true ] && [ -f "$reuse_exp/.done/$key" ] || return 1
  for p in "$@"; do
    [ -e "$reuse_exp/$p" ] || return 1
    if [ -e "$exp_dir/$p" ] && [ ! -L "$exp_dir/$p" ]; then return 1; fi
  done
  for p in "$@"; do
    mkdir -p "$(dirname "$exp_dir/$p")"
    ln -sfn "$(cd "$reuse_exp/$p" && pwd -P)" "$exp_dir/$p"
  done
  log "$key: reused $* from $reuse_exp"
  done_ "$key"
}
unlink_() { local p; for p in "$@"; do [ ! -L "$p" ] || rm "$p"; done; }  # never write through a link

evaluated=" "  # steps evaluated by this run: --force redoes M0 once, not in stages 1 and 6
evaluate() {  # evaluate i: decode M<i> on every test set, score those with reference text
  local i=$1 key model spec name cuts out
  key=$(key_of "$i"); model=$(model_dir "$i")
  for spec in $test_sets; do
    name=${spec%%=*}; cuts=${spec#*=}; out=$exp_dir/decode/M$i/$name
    if [[ $evaluated == *" $key.$name "* ]] || ! todo "decode.$key.$name"; then
      log "M$i/$name: evaluated already ($out)"; continue
    fi
    reuse "decode.$key.$name" "decode/M$i/$name" && continue
    if [ "$i" -eq 0 ]; then
      [ -n "$base_model" ] || die "stage 1 needs --base-model (a Hugging Face model directory)"
      need "$model/config.json" "--base-model must be a Hugging Face model directory"
    else
      need "$model/config.json" "run stage $(stage_of "${chain[$((i - 1))]}") first"
    fi
    need "$cuts" "prepare the $name manifest first (the corpus recipe's data stage)"
    unlink_ "$out"
    "${ilt_run[@]}" evaluate --model "$model" --cuts "$cuts" --conf "$conf_dir/decode.yaml" --out "$out" \
      --group-by "$group_by"
    [ -f "$out/scores.json" ] || log "M$i/$name: $cuts has no reference text: not scored; submission: $out/text"
    done_ "decode.$key.$name"
    evaluated+="$key.$name "
  done
}

run_round() {  # run_round STAGE ROUND
  local stage_no=$1 round=$2 i key prev args
  i=$(index_of "$round")
  if [ "$i" -eq 0 ]; then log "Stage $stage_no: $round is not in --rounds $rounds: skipped"; return; fi
  key=$(key_of "$i"); prev=$(model_dir $((i - 1)))
  todo "$key" || { log "Stage $stage_no: $round done already ($exp_dir/M$i)"; return; }
  reuse "$key" "$round" "M$i" && return
  log "Stage $stage_no: $round: M$((i - 1)) -> M$i"
  if [ "$i" -eq 1 ]; then
    need "$prev/config.json" "--base-model must be a Hugging Face model directory"
  else
    need "$prev/config.json" "run stage $(stage_of "${chain[$((i - 2))]}") first"
  fi
  args=(round --config "$conf_dir/$round.yaml" --model "$prev" --out "$exp_dir/$round"
        --merged-out "$exp_dir/M$i" --decode-config "$conf_dir/decode.yaml")
  if [ -n "$dev_cuts" ]; then
    need "$dev_cuts" "prepare the dev manifest first (the corpus recipe's data stage)"
    args+=(--dev "$dev_cuts")
  fi
  if [ -n "$train_cuts" ]; then
    need "$train_cuts" "prepare the train manifest first (the corpus recipe's data stage)"
    args+=(--train "$train_cuts")
  fi
  unlink_ "$exp_dir/$round" "$exp_dir/M$i"
  "${ilt_run[@]}" "${args[@]}"
  done_ "$key"
}

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: evaluate the base model M0 (${base_model:-unset}) on: ${test_sets:-no test set}"
  evaluate 0
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: prepare the extra corpora of the knowledge tasks: ${extra_corpora:-none}"
  for spec in $extra_corpora; do
    IFS=: read -r name dir opts <<< "$spec"
    todo "extra.$name.$(basename "$dir")" || { log "$spec: prepared already"; continue; }
    # shellcheck disable=SC2086  # OPTIONS are `ilt prepare NAME` options, split at commas
    ilt prepare "$name" "$dir" "$extra_dir" ${opts//,/ }
    done_ "extra.$name.$(basename "$dir")"
  done
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
  log "Stage 6: evaluate M0..M${#chain[@]}, report every scored set"
  models=M0
  for ((i = 0; i <= ${#chain[@]}; i++)); do
    evaluate $i
    [ $i -eq 0 ] || models+=",M$i"
  done
  for spec in $test_sets; do
    name=${spec%%=*}
    if [ -f "$exp_dir/decode/M0/$name/scores.json" ]; then
      ilt report "$exp_dir" --split "$name" --models "$models"
    else
      log "$name: no reference text: no report (submissions: $exp_dir/decode/M*/$name/text)"
    fi
  done
fi
log "Done: stages $stage..$stop_stage"
