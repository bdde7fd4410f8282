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
#   # stage 2: the extra corpora, then the knowledge sets of Feedback and Fix
#   bash run.sh --stage 2 --stop-stage 2 \
#     --extra-corpora "lhotse:/data/cv:--recipe,commonvoice,--name,cv_th,--language,th,--option,languages=th" \
#     --third-party-text /data/text/rare_sentences.tsv \
#     --select-candidates data/extra/cv_th_cuts_train.jsonl.gz
# Stage 2 builds, under data/extra/knowledge (../TEMPLATE/ilt.sh), the sets conf/feedback.yaml
# (tts, select) and conf/fix.yaml (hard_cases) train on; a round naming a set stage 2 did not
# build stops and names the option to give (or remove the source from the YAML).
# Paths are relative to the directory you run it from (conf/*.yaml name
# ${ILT_DATA_DIR:-data}/manifests/...; this script exports ILT_DATA_DIR=<--data-dir>).
set -euo pipefail

ILT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)  # upper case: not an option

stage=0
stop_stage=7
corpus_dir=              # official layout: <split>/<Language>/[<Accent>/]<conv>.{wav,txt}
base_model=              # M0: a local Hugging Face Whisper directory
extra_corpora=           # stage 2: "NAME:DIR[:OPTIONS] ...", NAME from `ilt plugins`
unlabeled_cuts=          # stage 5: a cut manifest of audio to pseudo-label for Fix (conf/fix.yaml uses it)
third_party_text=        # stage 2: "FILE ...": third-party sentences, LANG<TAB>sentence per line (or a
                         # labelled cut manifest, e.g. an --extra-corpora one): rare-token text, spoken by TTS
token_low=20             # stage 2: the paper's thresholds: rare tokens are counted fewer than 20 times
token_high=200           #   in the training text, frequent ones more than 200 times
rare_ratio=0.5           # stage 2: keep sentences whose rare tokens are more than half their tokens
hard_cases_cuts=         # stage 2: cuts M0 decodes for hard cases (default: the train split)
hard_max_error=0.05      # stage 2: keep those with a WER (CER for ja/ko/th) above 5%
hard_max_cuts=           # stage 2: decode at most this many of them (default: all)
tts_augmenter=espeak     # stage 2: espeak runs offline; the paper's voice cloning needs local checkpoints:
                         # '{name: f5tts, ckpt_file: /models/F5-TTS/F5TTS_v1_Base/model_1250000.safetensors,
                         #   vocab_file: /models/F5-TTS/F5TTS_v1_Base/vocab.txt, vocoder_dir: /models/vocos-mel-24khz}'
tts_prompts=             # stage 2: prompt recordings (default: the train split)
tts_languages=en         # stage 2: languages spoken by TTS (the paper: English accents; empty: all)
select_candidates=       # stage 2: labelled third-party cuts (e.g. data/extra/cv_th_cuts_train.jsonl.gz)
selector=resemblyzer     # stage 2: or the paper's '{name: wavlm, model_dir: /models/wavlm-base-plus-sv}'
secs_threshold=0.85      # stage 2: keep candidates whose SECS to the nearest training speaker is above it
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
export ILT_DATA_DIR=$data_dir  # conf/*.yaml name the manifests as ${ILT_DATA_DIR:-data}/...

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
train=$manifests/mlc_slm_cuts_train.jsonl.gz
exec bash "$ILT_ROOT/egs/TEMPLATE/ilt.sh" --stage $((stage < 1 ? 1 : stage)) --stop-stage "$stop_stage" \
  --base-model "$base_model" --dev-cuts "$manifests/mlc_slm_cuts_$dev_set.jsonl.gz" --test-sets "$sets" \
  --extra-corpora "$extra_corpora" --extra-dir "$data_dir/extra" --conf-dir "$conf_dir" --exp-dir "$exp_dir" \
  --knowledge-train-cuts "$train" --third-party-text "$third_party_text" --token-low "$token_low" \
  --token-high "$token_high" --rare-ratio "$rare_ratio" --hard-cases-cuts "${hard_cases_cuts:-$train}" \
  --hard-max-error "$hard_max_error" --hard-max-cuts "$hard_max_cuts" --tts-augmenter "$tts_augmenter" \
  --tts-prompts "$tts_prompts" --tts-languages "$tts_languages" --select-candidates "$select_candidates" --selector "$selector" \
  --secs-threshold "$secs_threshold" \
  --rounds "$rounds" --reuse-exp "$reuse_exp" --ngpu "$ngpu" --force "$force" \
  --unlabeled-cuts "$unlabeled_cuts" --pseudo-voter "$pseudo_voter" --pseudo-min-agreement "$pseudo_min_agreement" \
  --session-sets "$ssets" --diarizer "$diarizer"
