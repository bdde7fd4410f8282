#!/usr/bin/env bash
# Iterative LoRA Training on MLC-SLM (M0 -> M1 -> M2 -> M3): stage 0 prepares the
# corpus (segments and whole sessions), stages 1-7 are ../TEMPLATE/ilt.sh (see there).
#
#   bash run.sh --corpus-dir /data/MLC-SLM --base-model /models/whisper-large-v3
#   bash run.sh --stage 3 --stop-stage 5                     # the three ILT rounds only
#   bash run.sh --rounds focus,fix --exp-dir exp/focus+fix   # an ablation
#   bash run.sh --test-sets "dev eval"                       # eval has no text: submission only
#   bash run.sh --ngpu 8                                     # rounds and decoding under accelerate launch
#   bash run.sh --unlabeled-cuts data/manifests/pool_cuts.jsonl.gz  # Fix on pseudo-labels (stage 5)
#   # stage 2: the extra corpora, then the knowledge sets of Feedback and Fix
#   bash run.sh --stage 2 --stop-stage 2 \
#     --extra-corpora "lhotse:/data/cv:--recipe,commonvoice,--name,cv_th,--language,th,--option,languages=th" \
#     --third-party-text /data/text/rare_sentences.tsv \
#     --select-candidates data/extra/cv_th_cuts_train.jsonl.gz
#   # the paper's voice cloning and speaker model need local checkpoints:
#   bash run.sh --stage 2 --stop-stage 2 ... \
#     --tts-augmenter '{name: f5tts, ckpt_file: /models/F5-TTS/F5TTS_v1_Base/model_1250000.safetensors,
#        vocab_file: /models/F5-TTS/F5TTS_v1_Base/vocab.txt, vocoder_dir: /models/vocos-mel-24khz}' \
#     --selector '{name: wavlm, model_dir: /models/wavlm-base-plus-sv}'
#   bash run.sh --diarizer '{name: pyannote, pipeline_dir: DIR}'   # stage 7
#
# Only the corpus's own options are declared here; every other option goes to
# ../TEMPLATE/ilt.sh unchanged (its --help lists them), after this recipe's defaults for them
# (at the call below), so the one given here wins.
# Stage 2 builds, under data/extra/knowledge (../TEMPLATE/ilt.sh), the sets conf/feedback.yaml
# (tts, select) and conf/fix.yaml (hard_cases) train on; a round naming a set stage 2 did not
# build stops and names the option to give (or remove the source from the YAML).
# The round configs are this recipe's conf/ (the paper's settings). Paths are relative to the
# directory you run it from (conf/*.yaml name ${ILT_DATA_DIR:-data}/manifests/...; this script
# exports ILT_DATA_DIR=<--data-dir>).
set -euo pipefail

ILT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)  # upper case: not an option

stage=0
stop_stage=7
corpus_dir=              # official layout: <split>/<Language>/[<Accent>/]<conv>.{wav,txt}
data_dir=data
dev_set=dev              # picks each round's best checkpoint
test_sets="dev test"     # splits evaluated by stages 1 and 6; one without text (eval) is not scored
force=false              # true: rebuild the manifests (stage 0) and redo finished template steps

PASS_UNKNOWN_OPTIONS=$ILT_ROOT/egs/TEMPLATE/ilt.sh
. "$ILT_ROOT/tools/parse_options.sh"

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (mlc_slm/run.sh:${BASH_LINENO[0]}) $*" >&2; }
manifests=$data_dir/manifests
export ILT_DATA_DIR=$data_dir  # conf/*.yaml name the manifests as ${ILT_DATA_DIR:-data}/...

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: prepare the MLC-SLM manifests from $corpus_dir (skipped when they exist, unless --force true)"
  [ -n "$corpus_dir" ] || { log "ERROR: stage 0 needs --corpus-dir"; exit 1; }
  splits=(); for s in $(printf '%s\n' train $dev_set $test_sets | sort -u); do splits+=(--splits "$s"); done
  ilt prepare mlc-slm "$corpus_dir" --out "$manifests" "${splits[@]}" --sessions \
    "$([ "$force" = true ] && echo --overwrite || echo --no-overwrite)"
fi

[ $stop_stage -ge 1 ] || exit 0
sets=; for s in $test_sets; do sets+="${sets:+ }$s=$manifests/mlc_slm_cuts_$s.jsonl.gz"; done
ssets=; for s in $test_sets; do ssets+="${ssets:+ }$s=$manifests/mlc_slm_sessions_$s.jsonl.gz"; done
train=$manifests/mlc_slm_cuts_train.jsonl.gz
# This corpus's defaults for the template's options (the same option given to run.sh wins):
# hard cases and TTS prompts from the train split, TTS in English only (the paper: English accents).
exec bash "$ILT_ROOT/egs/TEMPLATE/ilt.sh" --stage $((stage < 1 ? 1 : stage)) --stop-stage "$stop_stage" \
  --force "$force" --conf-dir "$ILT_ROOT/egs/mlc_slm/conf" \
  --dev-cuts "$manifests/mlc_slm_cuts_$dev_set.jsonl.gz" --test-sets "$sets" --session-sets "$ssets" \
  --extra-dir "$data_dir/extra" --knowledge-train-cuts "$train" --hard-cases-cuts "$train" \
  --tts-languages en "${PASSED_OPTIONS[@]}"
