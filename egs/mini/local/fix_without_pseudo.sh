#!/usr/bin/env bash
# The Fix round again from the same M2, without the pseudo-labelled source, and M2, M3 and
# this M3 evaluated on dev and test: the "Fix with and without pseudo-labels" table of
# RESULTS.md. Run after `bash run.sh` (stages 1-6):
#
#   bash local/fix_without_pseudo.sh [--exp-dir exp] [--data-dir data] [--knowledge-dir DIR]
#       [--conf-dir conf] [--sets "dev test"] [--overrides "select.include_start=false ..."]
#
# --sets: the manifests mlc_slm_cuts_<set> evaluated; --overrides: -o KEY=VALUE for the round, each
# space separated (the converged track's evidence.sh runs it with its main Fix's settings).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

exp_dir=exp
data_dir=data
knowledge_dir=   # default: <data dir>/extra/knowledge, where recipe stage 2 wrote the hard cases
conf_dir=conf
sets="dev test"
overrides=

. ../../tools/parse_options.sh

knowledge_dir=${knowledge_dir:-$data_dir/extra/knowledge}
export ILT_DATA_DIR=$data_dir ILT_EXP_DIR=$exp_dir ILT_KNOWLEDGE_DIR=$knowledge_dir
manifests=$data_dir/manifests
train=$manifests/mlc_slm_cuts_train.jsonl.gz
hard=$knowledge_dir/hard_cases/cuts.jsonl.gz
extra=()
for o in $overrides; do extra+=(-o "$o"); done
# conf/fix.yaml's mix without its ${ILT_EXP_DIR}/pseudo source
ilt round --config "$conf_dir/fix.yaml" \
  -o "task.data=[{cuts: $train, weight: 1.0, weight_by: hours, languages: [en]},
      {cuts: $train, weight: 1.0, weight_by: hours}, {cuts: $hard, weight: 1.0, weight_by: hours}]" "${extra[@]}" \
  --model "$exp_dir/M2" --out "$exp_dir/fix_nopseudo" --merged-out "$exp_dir/M3_nopseudo" \
  --dev "$manifests/mlc_slm_cuts_dev.jsonl.gz" --decode-config "$conf_dir/decode.yaml"
for m in M2 M3 M3_nopseudo; do
  for split in $sets; do
    [ -f "$exp_dir/decode/$m/$split/scores.json" ] && continue
    ilt evaluate --model "$exp_dir/$m" --cuts "$manifests/mlc_slm_cuts_$split.jsonl.gz" \
      --decode-config "$conf_dir/decode.yaml" --out "$exp_dir/decode/$m/$split" --group-by accent
  done
done
