#!/usr/bin/env bash
# The paper's Table 2 on the mini corpus: every ordered subset of the ILT rounds
# (Only Focus, Only Feedback, Only Fix, Focus+Feedback, Feedback+Fix, Focus+Fix,
# all three), each scored on the test split, as one markdown table.
#
#   bash run_ablation.sh            # -> exp/ablation/table2.md
#
# Each configuration runs run.sh in its own exp dir with --reuse-exp: from exp/ (the
# main chain) or from the configuration of its rounds but the last, it links M0's decode
# and the models of the longest prefix of its rounds already trained there (same configs,
# data and seed give the same models) instead of training them again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

ablation_dir=exp/ablation
test_sets="test"
configs="focus feedback fix focus,feedback feedback,fix focus,fix focus,feedback,fix"

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (run_ablation.sh:${BASH_LINENO[0]}) $*" >&2; }

log "Data, M0 and M0's decode (in exp/), shared by every configuration"
bash run.sh --stage -1 --stop-stage 2 --test-sets "$test_sets"

dirs=()
for rounds in $configs; do
  name=${rounds//,/+}
  prefix=${rounds%,*}
  reuse=exp
  [ "$prefix" = "$rounds" ] || reuse=$ablation_dir/${prefix//,/+}
  log "$name: rounds $rounds, reusing what $reuse finished"
  bash run.sh --stage 3 --stop-stage 6 --rounds "$rounds" --exp-dir "$ablation_dir/$name" \
    --reuse-exp "$reuse" --test-sets "$test_sets"
  dirs+=("$ablation_dir/$name")
done

ilt report "${dirs[@]}" --split test --out "$ablation_dir/table2.md"
