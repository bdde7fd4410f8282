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
#      (with --detect-language m0|all, also with the language detected  -> decode/M0/<set>.detect)
#   2  prepare the extra corpora of the knowledge tasks (ilt prepare)     -> $extra_dir
#      then build the knowledge sets of Feedback and Fix (the paper's 3.2) -> $knowledge_dir
#      (default $extra_dir/knowledge, shared by every --exp-dir on the same base model and data;
#      its markers are $knowledge_dir/.done/<step>, and a step is redone when its command, or that
#      of a step it reads, changed), each step skipped when its input option is empty:
#        token_stats/  ilt augment token-stats: M0's tokens counted over --knowledge-train-cuts
#        rare_text/    ilt augment select-text: --third-party-text sentences mostly of rare tokens
#        hard_cases/   ilt augment hard-cases: M0 decodes --hard-cases-cuts holding frequent
#                      tokens, keeps those above --hard-max-error
#        tts/          ilt augment tts: --tts-augmenter speaks the rare-token sentences in the
#                      voices of --tts-prompts (default --knowledge-train-cuts)
#        select/       ilt select: --select-candidates whose speakers sound like those of
#                      --knowledge-train-cuts (SECS above --secs-threshold)
#      round YAMLs name a set as ${ILT_KNOWLEDGE_DIR}/<hard_cases|tts|select>/cuts.jsonl.gz
#      (this script exports ILT_KNOWLEDGE_DIR); a round naming a set the last stage 2 did not
#      build stops and says which option builds it
#   3  Focus    (ilt round: train $conf_dir/focus.yaml, merge)    -> M<i>, i its place in --rounds
#   4  Feedback (ilt round: train $conf_dir/feedback.yaml, merge) -> M<i>
#   5  Fix      (ilt round: train $conf_dir/fix.yaml, merge)      -> M<i>
#      with --unlabeled-cuts, first `ilt pseudo-label`: the models of the chain before Fix
#      (M0..M<i-1>) decode that audio and a voter labels it -> $exp_dir/pseudo/cuts.jsonl.gz;
#      fix.yaml names it as ${ILT_EXP_DIR}/pseudo/cuts.jsonl.gz (this script exports ILT_EXP_DIR)
#   6  evaluate every model of the chain M0..Mn, `ilt report` for each scored set
#   7  Track 2 on --session-sets (whole conversations): `ilt diarize` once per set, then for
#      each model `ilt transcribe-sessions` on oracle and on diarized speaker turns, scored by
#      tcpWER/cpWER (and DER)                                 -> track2/<oracle|diarized>/M<i>/<set>
# Several processes (--ngpu N, --accelerate-config FILE, several machines: docs/scale.md): the
# rounds, `ilt evaluate`, `ilt pseudo-label`, and (on one machine) the hard-case decoding of
# stage 2 and `ilt transcribe-sessions` run under `accelerate launch`; the rest is one process.
# Every evaluated set gets a submission file decode/<model>/<set>/text (Kaldi style, one
# "<utterance-id> <hypothesis>" per line); a set without reference text (an evaluation set)
# is decoded but not scored. Paths are relative to the directory you run it from.
set -euo pipefail

# Upper case: not options (tools/parse_options.sh turns every lower-case variable into one).
ILT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
COMMAND=$(printf '%q ' bash "$0" "$@")

stage=1
stop_stage=7
base_model=        # M0: a local Hugging Face model directory
train_cuts=        # if set, every round trains on these cuts instead of its YAML's task.data mix
dev_cuts=          # each round keeps its best checkpoint on these cuts
test_sets=         # "NAME=CUTS ...": evaluated into decode/<model>/NAME by stages 1 and 6
extra_corpora=     # stage 2: "NAME:DIR[:OPTION,OPTION...] ...", NAME a corpus of `ilt plugins`
extra_dir=data/extra
knowledge_dir=     # stage 2: the knowledge sets (default: $extra_dir/knowledge); one per base model
knowledge_train_cuts=  # stage 2: in-domain training cuts: token statistics, TTS prompts and the
                   # reference speakers of the selection (default: --train-cuts); empty: no set
third_party_text=  # stage 2: "FILE ...": third-party sentences (LANG<TAB>sentence lines, or a cut
                   # manifest whose texts are read) for the rare-token selection and TTS
token_low=20       # stage 2: a token counted fewer times in the training text is rare
token_high=200     #   and one counted more times is frequent (the paper's 20 and 200)
rare_ratio=0.5     # stage 2: keep sentences whose rare tokens are more than this share
hard_cases_cuts=   # stage 2: labelled cuts M0 decodes for hard cases (usually the training cuts)
hard_max_error=0.05  # stage 2: keep hard-case candidates whose WER (CER for ja/ko/th) is above it
hard_max_cuts=     # stage 2: decode at most this many hard-case candidates (default: all)
tts_augmenter=espeak  # stage 2: an augmenter of `ilt plugins` (YAML with options); none: no TTS
tts_prompts=       # stage 2: prompt cuts whose voices speak (default: --knowledge-train-cuts)
tts_per_sentence=1 # stage 2: prompt voices per selected sentence
tts_languages=     # stage 2: speak only the sentences of these languages, comma-separated (the
                   # paper speaks English only; default: all)
select_candidates= # stage 2: third-party cuts (labelled) kept when their speaker is close
selector=resemblyzer  # stage 2: a selector of `ilt plugins` (YAML with options)
secs_threshold=0.85   # stage 2: keep candidates whose SECS is above it
conf_dir=conf      # focus.yaml feedback.yaml fix.yaml decode.yaml: the corpus recipe's conf/
exp_dir=exp
rounds=focus,feedback,fix # any of them, in this order
round_overrides=   # "ROUND:KEY=VALUE ...": `-o KEY=VALUE` for that round's YAML (ROUND: focus,
                   # feedback, fix, or all), e.g. "all:train.max_dev_cuts=6 fix:train.max_steps=4"
reuse_exp=         # a finished experiment with the same base model, conf and test sets: link
                   # its M0 decodes and the models of the longest prefix of --rounds it trained
group_by=accent    # rows of the score tables: accent or language
detect_language=none  # none | m0 | all: those models are also decoded with the language
                   # detected (language: detect) into decode/M<i>/<set>.detect, and reported
unlabeled_cuts=    # stage 5: audio (no text needed) pseudo-labelled for the Fix round
pseudo_voter=rover # stage 5: a voter of `ilt plugins` (rover, majority)
pseudo_min_agreement=0.6
pseudo_truth=      # stage 5: the unlabeled audio's true text, if held aside: scores the labels
session_sets=      # stage 7: "NAME=SESSIONS ...": session manifests (ilt prepare mlc-slm --sessions)
diarizer='{name: offline, num_speakers: 2}'  # stage 7: a diarizer of `ilt plugins`, with options
track2_models=all  # stage 7: all (M0..Mn), ends (M0 and Mn) or last (Mn)
track2_turns=oracle,diarized  # stage 7: the reference turns, the diarizer's, or both
ngpu=              # processes per machine for the rounds and decoding (accelerate launch); empty:
                   # one, or the --accelerate-config's num_processes
accelerate_config= # an Accelerate config file (conf/accelerate/): its distributed type (DDP, FSDP,
                   # DeepSpeed), processes and machines; default for --ngpu N: DDP
num_machines=      # several machines: passed to accelerate launch as they are (empty: the config's)
machine_rank=      #   this machine's rank (0: the one that also runs the one-process steps)
main_process_ip=   #   machine 0's address
main_process_port= #   a free port there
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
case $detect_language in none|m0|all) ;; *) die "--detect-language $detect_language: none, m0 or all" ;; esac

mkdir -p "$exp_dir"
export ILT_EXP_DIR=$exp_dir  # round YAMLs name this experiment's outputs as ${ILT_EXP_DIR}/...
knowledge_dir=${knowledge_dir:-$extra_dir/knowledge}
knowledge_train_cuts=${knowledge_train_cuts:-$train_cuts}
export ILT_KNOWLEDGE_DIR=$knowledge_dir  # and the knowledge sets of stage 2 as ${ILT_KNOWLEDGE_DIR}/...
echo "cd $(printf '%q' "$PWD") && $COMMAND" >> "$exp_dir/commands.sh"  # replayable
# The markers of finished steps ($exp_dir/.done/<key>, $knowledge_dir/.done/<step>) and the
# fingerprints they hold: ilt/core/stages.py, through `ilt stage` (run as a module: one Python
# start per check rather than the whole ilt command line).
ilt_stage() { python -m ilt.cli.recipe_commands "$@"; }
todo() { [ "$(ilt_stage check "$exp_dir" "$1" --force "$force")" != done ]; }  # todo KEY: must it run?
done_() { ilt_stage done "$exp_dir" "$1" > /dev/null; }

# The multi-process steps (rounds, decoding) run as "${ilt_run[@]}": `ilt`, or `accelerate launch
# ... -m ilt.cli.main` with the config file and multi-node options as given (ilt/core/launch.py;
# the distributed type is the config's, never forced here).
ilt_run=(ilt); ilt_machines=1
if [ -n "$ngpu$accelerate_config$num_machines$machine_rank$main_process_ip$main_process_port" ]; then
  launcher=$(python -m ilt.core.launch --ngpu "$ngpu" --accelerate-config "$accelerate_config" \
    --num-machines "$num_machines" --machine-rank "$machine_rank" --main-process-ip "$main_process_ip" \
    --main-process-port "$main_process_port") || die "see the line above"
  eval "$launcher"  # ilt_run=(...) ilt_machines=N, shell-quoted by ilt.core.launch
  log "multi-process steps run as: ${ilt_run[*]}"
fi
# Machine 0 alone runs the one-process steps; another machine joins the launched ones, then
# waits for machine 0 to finish what its main process writes after them (merge, scores).
main_machine() { [ "${machine_rank:-0}" -eq 0 ]; }
launched() {  # launched KEY ARGS...: "${ilt_run[@]}" ARGS, then KEY done (on machine 0)
  local key=$1 since; shift
  since=$(date +%s)
  "${ilt_run[@]}" "$@"
  finished "$key" "$since"
}
finished() {  # finished KEY SINCE: mark KEY done on machine 0; elsewhere wait for machine 0's marker
  if main_machine; then done_ "$1"; return; fi
  log "$1: waiting for machine 0 to finish it ($exp_dir/.done/$1)"
  until [ -f "$exp_dir/.done/$1" ] && [ "$(stat -c %Y "$exp_dir/.done/$1")" -ge "$2" ]; do sleep 10; done
}
# The decoding steps that machine 0 runs alone (stage 2's hard cases, Track 2's transcriptions)
# use the launcher's processes when it spans one machine; on several, one process (their
# config's machines would wait for each other).
ilt_local=(ilt); [ "$ilt_machines" -gt 1 ] || ilt_local=("${ilt_run[@]}")

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
  [ -n "$reuse_exp" ] || return 1
  [ "$(ilt_stage reuse "$reuse_exp" "$exp_dir" "$@" --force "$force")" = reused ] || return 1
  log "$1: reused ${*:2} from $reuse_exp"
}
unlink_() { local p; for p in "$@"; do [ ! -L "$p" ] || rm "$p"; done; }  # never write through a link

evaluated=" "  # steps evaluated by this run: --force redoes M0 once, not in stages 1 and 6
evaluate() {  # evaluate i: decode M<i> on every test set, score those with reference text
  local i=$1 key model spec name cuts out mode
  local modes=(given) detect=()
  key=$(key_of "$i"); model=$(model_dir "$i")
  if [ "$detect_language" = all ] || { [ "$detect_language" = m0 ] && [ "$i" -eq 0 ]; }; then
    modes+=(detect)
  fi
  for spec in $test_sets; do
   for mode in "${modes[@]}"; do
    name=${spec%%=*}; cuts=${spec#*=}
    detect=(); [ "$mode" = given ] || { name=$name.detect; detect=(-o language=detect); }
    out=$exp_dir/decode/M$i/$name
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
    if main_machine; then unlink_ "$out"; fi
    launched "decode.$key.$name" evaluate --model "$model" --cuts "$cuts" --decode-config "$conf_dir/decode.yaml" \
      --out "$out" --group-by "$group_by" "${detect[@]}"
    [ -f "$out/scores.json" ] || log "M$i/$name: $cuts has no reference text: not scored; submission: $out/text"
    evaluated+="$key.$name "
   done
  done
}

run_round() {  # run_round STAGE ROUND
  local stage_no=$1 round=$2 i key prev args spec
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
  [ -n "$train_cuts" ] || knowledge_check "$conf_dir/$round.yaml"
  args=(round --config "$conf_dir/$round.yaml" --model "$prev" --out "$exp_dir/$round"
        --merged-out "$exp_dir/M$i" --decode-config "$conf_dir/decode.yaml")
  for spec in $round_overrides; do
    [[ $spec == ?*:?*=* ]] || die "--round-overrides: '$spec' is not ROUND:KEY=VALUE"
    case ${spec%%:*} in
      all|"$round") args+=(-o "${spec#*:}") ;;
      focus|feedback|fix) ;;
      *) die "--round-overrides: '${spec%%:*}' in '$spec' is not focus, feedback, fix or all" ;;
    esac
  done
  if [ -n "$dev_cuts" ]; then
    need "$dev_cuts" "prepare the dev manifest first (the corpus recipe's data stage)"
    args+=(--dev "$dev_cuts")
  fi
  if [ -n "$train_cuts" ]; then
    need "$train_cuts" "prepare the train manifest first (the corpus recipe's data stage)"
    args+=(--train "$train_cuts")
  fi
  if main_machine; then unlink_ "$exp_dir/$round" "$exp_dir/M$i"; fi
  launched "$key" "${args[@]}"
}

# Stage 2's knowledge sets live in $knowledge_dir, shared by experiments: their markers too
# ($knowledge_dir/.done/<step>, holding the step's command and those of the steps it reads, so
# other inputs or options rebuild it and what follows it). Each run of stage 2 decides which
# sets exist: a step skipped for want of its input option loses its marker (its files stay, as
# caches), and a round naming that set stops (knowledge_check).
knowledge_step() {  # knowledge_step NAME [--after STEP]: 0 when "${cmd[@]}" must run (krebuild=true:
  local state       # its output holds another build), 1 when it is built already
  state=$(ilt_stage check "$knowledge_dir" "$@" --force "$force" -- "${cmd[@]}") || die "ilt stage check $1 failed"
  case $state in
    done) log "Stage 2: $1 built already ($knowledge_dir/$1)"; return 1 ;;
    changed) log "Stage 2: $1 was built from other inputs or options: rebuilding it" ;;
  esac
  krebuild=false
  if [ "$state" != new ]; then
    krebuild=true
    ilt_stage clear "$knowledge_dir" "$1" > /dev/null  # until the step succeeds again, no round may use its set
  fi
  return 0
}
knowledge_skip() {  # knowledge_skip NAME WHY
  local was=
  if [ "$(ilt_stage clear "$knowledge_dir" "$1")" = removed ]; then
    was=" (the set built before, $knowledge_dir/$1, is no longer used)"
  fi
  log "Stage 2: $1 skipped: $2$was"
}
knowledge_run() {  # knowledge_run NAME UPSTREAM MESSAGE [resumes]: run "${cmd[@]}" unless built already
  # from the same command and the same build of step UPSTREAM (empty: none), whose output it reads;
  # then mark it built. A step that resumes its own output gets --force when rebuilding.
  local after=(); [ -z "$2" ] || after=(--after "$2")
  knowledge_step "$1" "${after[@]}" || return 0
  log "Stage 2: $3"
  local run=("${cmd[@]}")  # its fingerprint is "${cmd[@]}", whatever runs it
  [ "${cmd[0]}" != ilt ] || run=("${krun[@]}" "${cmd[@]:1}")
  if [ "${4:-}" = resumes ] && [ "$krebuild" = true ]; then "${run[@]}" --overwrite; else "${run[@]}"; fi
  ilt_stage done "$knowledge_dir" "$1" "${after[@]}" -- "${cmd[@]}" > /dev/null
}

knowledge_sets() {  # stage 2: token statistics, rare-token text, hard cases, TTS, speaker selection
  local kn=$knowledge_dir texts=() cmd f base owner rare=false krun=(ilt)  # krun: what runs `ilt` steps
  if [ -z "$knowledge_train_cuts" ]; then
    log "Stage 2: no --knowledge-train-cuts (nor --train-cuts): no knowledge set built"
    return 0
  fi
  [ -n "$base_model" ] || die "stage 2 needs --base-model (its tokenizer and decoding build the knowledge sets)"
  need "$base_model/config.json" "--base-model must be a Hugging Face model directory"
  need "$knowledge_train_cuts" "prepare the training manifest first (the corpus recipe's data stage)"
  base=$(cd "$base_model" && pwd -P)
  owner=$(ilt_stage claim "$kn" base_model "$base" --force "$force")
  [ "$owner" = ok ] ||
    die "$kn holds the knowledge sets of base model $owner, not $base: give each base model its own --knowledge-dir DIR (or --force true to rebuild them here)"

  cmd=(ilt augment token-stats --cuts "$knowledge_train_cuts" --model "$base_model" --low "$token_low"
       --high "$token_high" --out "$kn/token_stats")
  knowledge_run token_stats "" \
    "token statistics of $knowledge_train_cuts (rare < $token_low, frequent > $token_high)"

  if [ -z "$third_party_text" ]; then
    knowledge_skip rare_text "no --third-party-text"
  else
    for f in $third_party_text; do need "$f" "--third-party-text: a text file or cut manifest"; texts+=(--text "$f"); done
    cmd=(ilt augment select-text --stats "$kn/token_stats" "${texts[@]}" --min-ratio "$rare_ratio"
         --out "$kn/rare_text")
    knowledge_run rare_text token_stats \
      "rare-token sentences of $third_party_text (rare tokens > $rare_ratio of a sentence)"
    rare=true
  fi

  if [ -z "$hard_cases_cuts" ]; then
    knowledge_skip hard_cases "no --hard-cases-cuts"
  else
    need "$hard_cases_cuts" "--hard-cases-cuts: prepare that manifest first"
    cmd=(ilt augment hard-cases --model "$base_model" --cuts "$hard_cases_cuts" --stats "$kn/token_stats"
         --max-error-rate "$hard_max_error" --decode-config "$conf_dir/decode.yaml" --out "$kn/hard_cases")
    [ -z "$hard_max_cuts" ] || cmd+=(--max-candidates "$hard_max_cuts")
    krun=("${ilt_local[@]}")  # the decoding shards over the processes
    knowledge_run hard_cases token_stats \
      "hard cases: M0 decodes the cuts of $hard_cases_cuts with frequent tokens${hard_max_cuts:+ (at most $hard_max_cuts)}"
    krun=(ilt)
  fi

  if [ "$rare" = false ] || [ -z "$tts_augmenter" ] || [ "$tts_augmenter" = none ]; then
    knowledge_skip tts "$([ "$rare" = false ] && echo "no rare-token sentences (no --third-party-text)" || echo "--tts-augmenter none")"
  elif [ ! -s "$kn/rare_text/selected.txt" ]; then
    knowledge_skip tts "select-text kept no sentence ($kn/rare_text/summary.json): lower --rare-ratio or raise --token-low"
  else
    need "${tts_prompts:-$knowledge_train_cuts}" "--tts-prompts: prepare that manifest first"
    cmd=(ilt augment tts --augmenter "$tts_augmenter" --prompts "${tts_prompts:-$knowledge_train_cuts}"
         --texts "$kn/rare_text/selected.txt" --per-sentence "$tts_per_sentence" --out "$kn/tts")
    [ -z "$tts_languages" ] || cmd+=(--languages "$tts_languages")
    knowledge_run tts rare_text \
      "TTS ($tts_augmenter) of the rare-token sentences${tts_languages:+ in $tts_languages} in the voices of ${tts_prompts:-$knowledge_train_cuts}" \
      resumes
  fi

  if [ -z "$select_candidates" ]; then
    knowledge_skip select "no --select-candidates"
  else
    need "$select_candidates" "--select-candidates: prepare the third-party manifest first"
    cmd=(ilt select --selector "$selector" --reference "$knowledge_train_cuts" --candidates "$select_candidates"
         --threshold "$secs_threshold" --out "$kn/select")
    knowledge_run select "" \
      "speaker selection ($selector) of $select_candidates (SECS > $secs_threshold)"
  fi
}

knowledge_check() {  # knowledge_check YAML: every knowledge set it names, stage 2 built (not empty)
  local yaml=$1 set cuts hint
  for set in $(grep -vE '^[[:space:]]*#' "$yaml" | grep -oE 'ILT_KNOWLEDGE_DIR[^}]*\}/[A-Za-z0-9_.-]+' |
               sed 's#.*}/##' | sort -u); do
    case $set in
      hard_cases) hint="--hard-cases-cuts CUTS" ;;
      tts) hint="--third-party-text FILE (TTS speaks the rare-token sentences it selects)" ;;
      select) hint="--select-candidates CUTS" ;;
      *) die "$yaml names the knowledge set '$set': stage 2 builds hard_cases, tts and select" ;;
    esac
    cuts=$knowledge_dir/$set/cuts.jsonl.gz
    if [ "$(ilt_stage check "$knowledge_dir" "$set")" != done ] || [ ! -f "$cuts" ]; then
      die "$yaml trains on the knowledge set '$set' ($cuts), which stage 2 did not build: run stage 2 with $hint and --knowledge-train-cuts CUTS (see its log), or remove that source from $yaml"
    fi
    [ -n "$(gzip -cd "$cuts" 2>/dev/null | head -c 1)" ] ||
      die "$yaml trains on the knowledge set '$set' ($cuts), but stage 2 kept no cut in it (see $knowledge_dir/$set/summary.json): loosen its thresholds, or remove that source from $yaml"
  done
}

pseudo_labels() {  # the models of the chain before Fix vote labels for --unlabeled-cuts
  local i key models=() j out=$exp_dir/pseudo since
  i=$(index_of fix)
  [ "$i" -gt 0 ] || return 0
  # without the models before Fix, run_round says which stage to run first
  [ -f "$(model_dir $((i - 1)))/config.json" ] || return 0
  if [ -z "$unlabeled_cuts" ]; then
    ! grep -q 'ILT_EXP_DIR[^/]*/pseudo/' "$conf_dir/fix.yaml" ||
      die "$conf_dir/fix.yaml trains on pseudo-labels: give --unlabeled-cuts CUTS, or remove that source"
    return 0
  fi
  key=pseudo.$(key_of $((i - 1)))
  todo "$key" || { log "Stage 5: pseudo-labels done already ($out)"; return; }
  reuse "$key" pseudo && return
  need "$unlabeled_cuts" "prepare the unlabeled manifest first (the corpus recipe's data stage)"
  for ((j = 0; j < i; j++)); do
    need "$(model_dir $j)/config.json" "run the rounds before Fix first"
    models+=(--models "$(model_dir $j)")
  done
  log "Stage 5: pseudo-labels for $unlabeled_cuts by M0..M$((i - 1)) ($pseudo_voter, agreement >= $pseudo_min_agreement)"
  if main_machine; then unlink_ "$out"; fi
  since=$(date +%s)
  # every process decodes its shard of each model's pass; the main one votes and writes
  "${ilt_run[@]}" pseudo-label "${models[@]}" --cuts "$unlabeled_cuts" --voter "$pseudo_voter" \
    --min-agreement "$pseudo_min_agreement" --decode-config "$conf_dir/decode.yaml" --out "$out"
  if [ -n "$pseudo_truth" ] && main_machine; then  # the labels (kept or not) against the held-aside text
    ilt score --ref "$pseudo_truth" --hyp "$out/votes.jsonl" --out "$out/score" --group-by language
  fi
  finished "$key" "$since"
}

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: evaluate the base model M0 (${base_model:-unset}) on: ${test_sets:-no test set}"
  evaluate 0
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ] && ! main_machine; then
  log "Stage 2: machine 0 builds the knowledge sets (run stage 2 there before the rounds): skipped"
elif [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: prepare the extra corpora of the knowledge tasks: ${extra_corpora:-none}"
  for spec in $extra_corpora; do
    IFS=: read -r name dir opts <<< "$spec"
    key=extra.$name.$(basename "$dir")${opts:+.$(printf '%s' "$opts" | tr -c 'A-Za-z0-9_.-' _)}
    todo "$key" || { log "$spec: prepared already"; continue; }
    # shellcheck disable=SC2086  # OPTIONS are `ilt prepare NAME` options, split at commas
    ilt prepare "$name" "$dir" --out "$extra_dir" ${opts//,/ }
    done_ "$key"
  done
  knowledge_sets
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
  pseudo_labels
  run_round 5 fix
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: evaluate M0..M${#chain[@]}, report every scored set"
  models=M0
  for ((i = 0; i <= ${#chain[@]}; i++)); do
    evaluate $i
    [ $i -eq 0 ] || models+=",M$i"
  done
  main_machine || test_sets=  # reports and cards: machine 0's
  for spec in $test_sets; do
    name=${spec%%=*}
    if [ -f "$exp_dir/decode/M0/$name/scores.json" ]; then
      ilt report "$exp_dir" --split "$name" --models "$models"
      log "$name: report page: $exp_dir/report/report_$name.html"
      case $detect_language in  # languages detected: the same table (M0 only, or every model)
        m0) ilt report "$exp_dir" --split "$name.detect" --models M0 ;;
        all) ilt report "$exp_dir" --split "$name.detect" --models "$models" ;;
      esac
    else
      log "$name: no reference text: no report (submissions: $exp_dir/decode/M*/$name/text)"
    fi
  done
  # each trained model's Hugging Face card (README.md) gets its error rates from the reports
  for ((i = 1; i <= ${#chain[@]}; i++)); do
    main_machine || break
    [ -L "$exp_dir/M$i" ] || ilt card "$exp_dir/M$i"
  done
fi
if [ $stage -le 7 ] && [ $stop_stage -ge 7 ] && ! main_machine; then
  log "Stage 7: machine 0 runs Track 2 (one process): skipped"
elif [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  log "Stage 7: Track 2 (diarize, transcribe whole sessions, tcpWER) on: ${session_sets:-no session set}"
  case $track2_models in all|ends|last) ;; *) die "--track2-models $track2_models: all, ends or last" ;; esac
  for seg in ${track2_turns//,/ }; do
    case $seg in oracle|diarized) ;; *) die "--track2-turns: '$seg' is not oracle or diarized" ;; esac
  done
  n=${#chain[@]}
  for spec in $session_sets; do
    [[ $spec == ?*=?* ]] || die "--session-sets: '$spec' is not NAME=SESSIONS"
    name=${spec%%=*}; sessions=${spec#*=}; dia=$exp_dir/diarize/$name
    need "$sessions" "prepare the session manifests first (ilt prepare mlc-slm ... --sessions)"
    if [[ ,$track2_turns, == *,diarized,* ]] && todo "diarize.$name"; then
      ilt diarize --sessions "$sessions" --diarizer "$diarizer" --out "$dia"
      done_ "diarize.$name"
    fi
    for ((i = 0; i <= n; i++)); do
      case $track2_models in
        ends) [ $i -eq 0 ] || [ $i -eq "$n" ] || continue ;;
        last) [ $i -eq "$n" ] || continue ;;
      esac
      need "$(model_dir $i)/config.json" "run the rounds first"
      for seg in ${track2_turns//,/ }; do
        key=track2.$(key_of $i).$seg.$name
        todo "$key" || { log "M$i/$name: Track 2 ($seg) done already"; continue; }
        turns=(--oracle); [ $seg = oracle ] || turns=(--rttm "$dia/diarization.rttm")
        "${ilt_local[@]}" transcribe-sessions --model "$(model_dir $i)" --sessions "$sessions" "${turns[@]}" \
          --decode-config "$conf_dir/decode.yaml" --out "$exp_dir/track2/$seg/M$i/$name"
        done_ "$key"
      done
    done
  done
fi
log "Done: stages $stage..$stop_stage"
