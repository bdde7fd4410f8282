#!/usr/bin/env bash
# The paper's Table 2 on the mini corpus: every ordered subset of the ILT rounds
# (Only Focus, Only Feedback, Only Fix, Focus+Feedback, Feedback+Fix, Focus+Fix,
# all three), each scored on the test split, as one markdown table, plus one control row:
# a single LoRA round with Feedback's scope and rank, trained for as many steps as the three
# rounds together, on the data of the three rounds together (conf_control/feedback.yaml).
#
#   bash run_ablation.sh                         # demo track -> exp/ablation/table2.md
#   bash run_ablation.sh --track multilingual    # -> exp_ml/ablation/table2.md
#
# Each configuration runs run.sh in its own exp dir with --reuse-exp: from the main chain
# (exp/ or exp_ml/) when its rounds begin that chain, else from the configuration of its
# rounds but the last, it links M0's decode
# and the models of the longest prefix of its rounds already trained there (same configs,
# data and seed give the same models) instead of training them again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

track=demo
test_sets=     # default: run.sh's for the track (test; converged: test test2 test3)
configs="focus feedback fix focus,feedback feedback,fix focus,fix focus,feedback,fix"
control=       # the single long round (conf_control/feedback.yaml); default true, false for converged,
               # whose tuned control is local/evidence.sh --parts control
round_overrides=  # "ROUND:KEY=VALUE ..." for every configuration's run.sh (only when given: an empty
                  # one would replace the track's own, e.g. the demo's step counts)

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (run_ablation.sh:${BASH_LINENO[0]}) $*" >&2; }
case $track in
  # the control's steps are those of the three rounds together: 26 (conf_control) at the
  # multilingual scale (conf/: 10 + 10 + 6), 13 at the demo's (run.sh: 5 + 5 + 3)
  demo) main=exp; control_overrides="feedback:train.max_steps=13 feedback:train.eval_every=3 all:train.max_dev_cuts=6" ;;
  multilingual) main=exp_ml; control_overrides= ;;
  converged) main=exp_conv; control=${control:-false} ;;
  *) log "ERROR: --track $track: choose demo, multilingual or converged"; exit 1 ;;
esac
control=${control:-true}
if [ "$track" = converged ] && [ "$control" = true ]; then
  log "ERROR: --control true: the converged track's control is tuned by local/evidence.sh --parts control"; exit 1
fi
ablation_dir=$main/ablation

log "Data, M0 and M0's decode (in $main/), shared by every configuration"
bash run.sh --track "$track" --stage -1 --stop-stage 2 --test-sets "$test_sets" --detect-language none

dirs=()
for rounds in $configs; do
  name=${rounds//,/+}
  prefix=${rounds%,*}
  reuse=$main  # a prefix of the main chain's rounds is all there; otherwise the config but its last
  case focus,feedback,fix, in "$rounds",*) ;; *) [ "$prefix" = "$rounds" ] || reuse=$ablation_dir/${prefix//,/+} ;; esac
  log "$name: rounds $rounds, reusing what $reuse finished"
  bash run.sh --track "$track" --stage 3 --stop-stage 6 --rounds "$rounds" --exp-dir "$ablation_dir/$name" \
    --reuse-exp "$reuse" --test-sets "$test_sets" --detect-language none \
    ${round_overrides:+--round-overrides "$round_overrides"}
  dirs+=("$ablation_dir/$name")
done

if [ "$control" = true ]; then
  # the main chain's pseudo-labels (voted by M0, M1, M2) are part of the three rounds' data
  [ -f "$main/pseudo/cuts.jsonl.gz" ] || { log "ERROR: $main/pseudo/cuts.jsonl.gz: run the main chain first"; exit 1; }
  export ILT_PSEUDO_CUTS=$main/pseudo/cuts.jsonl.gz
  log "control: one Feedback-scope round, the three rounds' steps and data"
  bash run.sh --track "$track" --stage 3 --stop-stage 6 --rounds feedback --conf-dir conf_control \
    --round-overrides "$control_overrides" --exp-dir "$ablation_dir/control" --reuse-exp "$main" --test-sets "$test_sets" --detect-language none
  dirs+=("$ablation_dir/control")
fi

ilt report "${dirs[@]}" --split test --out "$ablation_dir/table2.md"
