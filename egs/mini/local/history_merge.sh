#!/usr/bin/env bash
# The last round merged with the history (the paper's Eq. 3) against the plain merge,
# on the test set, after `bash run.sh` (make demo) has made M0..M3:
#
#   bash local/history_merge.sh                       # M3 = w0 (M2 + fix) + w1 M1 for each setting
#   bash local/history_merge.sh --settings "0.8,0.2"
#
# Each setting "w0,w1[,w2]" merges exp/fix/best into exp/M2 with --history exp/M1 [exp/M0]
# into exp/M3-h<w0>-<w1>..., evaluates it like stage 6 and adds it to the report.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

exp_dir=exp
conf_dir=conf
test_set="test"
manifests=data/manifests
settings="0.8,0.2 0.5,0.5"

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (history_merge.sh:${BASH_LINENO[0]}) $*" >&2; }
for m in M0 M1 M2 M3; do
  [ -f "$exp_dir/$m/config.json" ] || { log "ERROR: missing $exp_dir/$m: run bash run.sh first"; exit 1; }
done

models=M0,M1,M2,M3
for weights in $settings; do
  IFS=, read -r -a w <<< "$weights"
  history=(--history "$exp_dir/M1")
  [ ${#w[@]} -lt 3 ] || history+=(--history "$exp_dir/M0")
  name=M3-h$(IFS=-; echo "${w[*]}")
  log "$name: ${w[0]} (M2 + fix) + ${w[*]:1} (M1${w[2]:+, M0})"
  ilt merge --model "$exp_dir/M2" --adapter "$exp_dir/fix/best" "${history[@]}" --weights "$weights" \
    --out "$exp_dir/$name" --overwrite
  ilt evaluate --model "$exp_dir/$name" --cuts "$manifests/mlc_slm_cuts_$test_set.jsonl.gz" \
    --decode-config "$conf_dir/decode.yaml" --out "$exp_dir/decode/$name/$test_set" --group-by accent
  models+=",$name"
done
ilt report "$exp_dir" --split "$test_set" --models "$models" --out "$exp_dir/report_history"
