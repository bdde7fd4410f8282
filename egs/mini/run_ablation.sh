#!/usr/bin/env bash
# The paper's Table 2 on the mini corpus: every ordered subset of the ILT rounds
# (Only Focus, Only Feedback, Only Fix, Focus+Feedback, Feedback+Fix, Focus+Fix,
# all three), each scored on the test split, as one markdown table.
#
#   bash run_ablation.sh            # -> exp/ablation/table2.md
#
# A configuration whose rounds start with another configuration's rounds reuses
# that chain's trained models (same configs, data and seed give the same models).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

ablation_dir=exp/ablation
test_sets=test
configs="focus feedback fix focus,feedback feedback,fix focus,fix focus,feedback,fix"

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (run_ablation.sh:${BASH_LINENO[0]}) $*" >&2; }

log "Data, M0 and M0's decode, shared by every configuration"
bash run.sh --stage -1 --stop-stage 2 --test-sets "$test_sets"

dirs=()
for rounds in $configs; do
  name=${rounds//,/+}
  exp=$ablation_dir/$name
  dirs+=("$exp")
  mkdir -p "$exp/decode" "$exp/.done"
  [ -e "$exp/decode/M0" ] || ln -s "$PWD/exp/decode/M0" "$exp/decode/M0"
  touch "$exp/.done/stage1"
  prefix=${rounds%,*}
  if [ "$prefix" != "$rounds" ] && [ -f "$ablation_dir/${prefix//,/+}/.done/stage6" ]; then
    src=$ablation_dir/${prefix//,/+}
    i=0
    for r in ${prefix//,/ }; do
      i=$((i + 1))
      [ -e "$exp/$r" ] || ln -s "$PWD/$src/$r" "$exp/$r"
      [ -e "$exp/M$i" ] || ln -s "$PWD/$src/M$i" "$exp/M$i"
      cp "$src"/.done/stage?."$r" "$exp/.done/"
    done
    log "$name: reusing $prefix from $src"
  fi
  log "$name: rounds $rounds"
  bash run.sh --stage 3 --stop-stage 6 --rounds "$rounds" --exp-dir "$exp" --test-sets "$test_sets"
done

ilt report "${dirs[@]}" --split test --out "$ablation_dir/table2.md"
