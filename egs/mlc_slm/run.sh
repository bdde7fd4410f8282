#!/usr/bin/env bash
# Iterative LoRA Training on MLC-SLM (M0 -> M1 -> M2 -> M3): stage 0 prepares the
# corpus (segments and whole sessions), stages 1-7 are ../TEMPLATE/ilt.sh (see there).
#
#   bash run.sh --corpus-dir /data/MLC-SLM --base-model /models/whisper-large-v3
#   bash run.sh --stage 3 --stop-stage 5                     # the three ILT rounds only
#   bash run.sh --rounds focus,fix --exp-dir exp/focus+fix   # an ablation
#   bash run.sh --test-sets "dev eval"                       # eval has no text: submission only
#   bash run.sh --ngpu 8                                     # under accelerate launch
#   bash run.sh --unlabeled-cuts data/manifests/pool_cuts.jsonl.gz  # Fix on pseudo-labels (stage 5)
# Paths are relative to the directory you run it from (conf/*.yaml name data/manifests/...).
set -euo pipefail

ILT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)  # upper case: not an option

stage=0
stop_stage=7
corpus_dir=              # official layout: <split>/<Language>/[<Accent>/]<conv>.{wav,txt}
base_model=              # M0: a local Hugging Face Whisper directory
extra_corpora=           # stage 2: "NAME:DIR[:OPTIONS] ...", NAME from `ilt plugins`
unlabeled_cuts=          # stage 5: a cut manifest of audio to pseudo-label for Fix (conf/fix.yaml uses it)
pseudo_voter=rover
pseudo_min_agreement=0.6
diarizer='{name: offline, num_speakers: 2}'  # stage 7; or {name: pyannote, pipeline_dir: DIR}
conf_dir=$ILT_ROOT/conf  # focus.yaml feedback.yaml fix.yaml decode.yaml
data_dir=data
exp_dir=exp
rounds=focus,feedback,fix
reuse_exp=
dev_set=dev              # picks each round's best checkpoint
test_sets="dev test"     # splits evaluated by stages 1 and 6; one without text (eval) is not scored
ngpu=1
force=false

. "$ILT_ROOT/tools/parse_options.sh"

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (mlc_slm/run.sh:${BASH_LINENO[0]}) $*" >&2; }
manifests=$data_dir/manifests

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: prepare the MLC-SLM manifests from $corpus_dir (skipped when they exist, unless --force true)"
  [ -n "$corpus_dir" ] || { log "ERROR: stage 0 needs --corpus-dir"; exit 1; }
  splits=(); for s in $(printf '%s\n' train $dev_set $test_sets | sort -u); do splits+=(--splits "$s"); done
  ilt prepare mlc-slm "$corpus_dir" "$manifests" "${splits[@]}" --sessions \
    "$([ "$force" = true ] && echo --force || echo --no-force)"
fi

[ $stop_stage -ge 1 ] || exit 0
sets=; for s in $test_sets; do sets+="${sets:+ }$s=$manifests/mlc_slm_cuts_$s.jsonl.gz"; done
ssets=; for s in $test_sets; do ssets+="${ssets:+ }$s=$manifests/mlc_slm_sessions_$s.jsonl.gz"; done
exec bash "$ILT_ROOT/egs/TEMPLATE/ilt.sh" --stage $((stage < 1 ? 1 : stage)) --stop-stage "$stop_stage" \
  --base-model "$base_model" --dev-cuts "$manifests/mlc_slm_cuts_$dev_set.jsonl.gz" --test-sets "$sets" \
  --extra-corpora "$extra_corpora" --extra-dir "$data_dir/extra" --conf-dir "$conf_dir" --exp-dir "$exp_dir" \
  --rounds "$rounds" --reuse-exp "$reuse_exp" --ngpu "$ngpu" --force "$force" \
  --unlabeled-cuts "$unlabeled_cuts" --pseudo-voter "$pseudo_voter" --pseudo-min-agreement "$pseudo_min_agreement" \
  --session-sets "$ssets" --diarizer "$diarizer"
