#!/usr/bin/env bash
# Language-ID embeddings on or off (paper 3.2.3; docs/lid.md): two Focus rounds from the same
# M0, on every language of the in-domain train set (the recipe's Focus is English only, which
# would leave the other languages' vectors untrained), identical but for train.lid_embeddings.
# Each merged model is scored on the test set with the language given and detected; the
# detection's confusions come from decode_stats.json.
#
#   bash local/lid_compare.sh --track multilingual     # after run.sh stages -1..0 -> exp_ml/lid/
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

track=multilingual
conf_dir=conf
steps=           # default: focus.yaml's train.max_steps

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (lid_compare.sh:${BASH_LINENO[0]}) $*" >&2; }
case $track in demo) suffix= ;; multilingual) suffix=_ml ;; *) log "ERROR: --track $track"; exit 1 ;; esac
exp=exp$suffix; manifests=data$suffix/manifests
[ -f "$exp/M0/config.json" ] || { log "ERROR: $exp/M0: run 'bash run.sh --track $track --stop-stage 0' first"; exit 1; }
overrides=(-o "task.data=[{cuts: $manifests/mlc_slm_cuts_train.jsonl.gz, weight: 1.0}]")
[ -z "$steps" ] || overrides+=(-o "train.max_steps=$steps")

for lid in off on; do
  dir=$exp/lid/$lid; flag=false; [ $lid = on ] && flag=true
  if [ ! -f "$dir/M1/config.json" ]; then
    log "Focus on every language, lid_embeddings: $flag -> $dir/M1"
    ilt round --config "$conf_dir/focus.yaml" "${overrides[@]}" -o "train.lid_embeddings=$flag" \
      --model "$exp/M0" --out "$dir/focus" --merged-out "$dir/M1" \
      --dev "$manifests/mlc_slm_cuts_dev.jsonl.gz" --decode-config "$conf_dir/decode.yaml"
  fi
  for mode in given detect; do
    out=$dir/decode/M1/test; [ $mode = given ] || out+=.detect
    [ -f "$out/scores.json" ] && continue
    ilt evaluate --model "$dir/M1" --cuts "$manifests/mlc_slm_cuts_test.jsonl.gz" --decode-config "$conf_dir/decode.yaml" \
      --out "$out" --group-by accent -o "language=$mode"
  done
done

for split in test test.detect; do
  ilt report "$exp/lid/off" "$exp/lid/on" --split $split --out "$exp/lid/table_$split.md" > /dev/null
  echo "## language $([ $split = test ] && echo given || echo detected)"; cat "$exp/lid/table_$split.md"
done
python - "$exp" <<'PY'
import json, sys
from pathlib import Path
exp = Path(sys.argv[1])
for name in ("M0", "lid/off/M1", "lid/on/M1"):
    base = exp / ("decode/M0" if name == "M0" else name.replace("/M1", "/decode/M1"))
    stats = base / "test.detect" / "decode_stats.json"
    if stats.is_file():
        det = json.loads(stats.read_text()).get("language_detection") or {}
        print(f"{name}: language detected for {det.get('cuts')} cuts, confused {det.get('confused')}: "
              f"{det.get('confusions')}")
PY
