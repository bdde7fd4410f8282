#!/usr/bin/env bash
# LoRA language experts against one shared LoRA (docs/experts.md; Li et al., Interspeech 2025),
# all from the same M0, scored on the test set per language and pooled:
#   (a) one shared LoRA on every language, as many steps as all the experts together;
#   (b) the language experts, each cut routed by its given language;
#   (c) the experts fused into one adapter, the method with the lowest dev error of --fuse-methods;
#   (d) one student LoRA distilled from the experts (conf/distill.yaml, --distill-steps);
#   (e) (b) with each cut routed by the language M0 detects.
# (a) is conf/focus.yaml on every language, the same LoRA (r=16, q/k/v) and schedule as
# conf/experts.yaml; every step is resumable.
#
#   bash local/experts_compare.sh --track multilingual   # after run.sh stages -1..0 -> exp_ml/experts_cmp/
#   bash local/experts_compare.sh --track converged      # after local/evidence.sh --parts main
#
# converged: conf_converged/, every system decoded on test, test2 and test3. (a) IS the main chain's
# Focus (exp_conv/focus: the shared recipe, from M0, every language, at most 96 steps), not trained
# again; its decodes are M1's. The experts run 2 epochs of their own language each (the corpus's
# ratio, 96 steps together), the student at most as many steps as the experts ran.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

track=multilingual
conf_dir=        # default: conf, or conf_converged for --track converged
fuse_methods="cat,ties-sum"  # <method>[-sum]: -sum gives each expert weight 1 (default 1/n)
distill_steps=   # default: as many as (a)

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (experts_compare.sh:${BASH_LINENO[0]}) $*" >&2; }
sets=test
case $track in
  demo) suffix= ;;
  multilingual) suffix=_ml ;;
  converged) suffix=_conv; sets="test test2 test3"; conf_dir=${conf_dir:-conf_converged} ;;
  *) log "ERROR: --track $track: choose demo, multilingual or converged"; exit 1 ;;
esac
conf_dir=${conf_dir:-conf}
exp=exp$suffix; manifests=data$suffix/manifests; out=$exp/experts_cmp
export ILT_DATA_DIR=data$suffix
train=$manifests/mlc_slm_cuts_train.jsonl.gz; dev=$manifests/mlc_slm_cuts_dev.jsonl.gz
dconf=$conf_dir/decode.yaml
[ -f "$exp/M0/config.json" ] || { log "ERROR: $exp/M0: run 'bash run.sh --track $track --stop-stage 0' first"; exit 1; }

evaluate() {  # evaluate OUT ARGS...: decode + score once; OUT/<set> for each test set, or OUT alone with cuts=DEV
  local dir=$1 set; shift
  if [ -n "${cuts:-}" ]; then
    [ -f "$dir/scores.json" ] || ilt evaluate --cuts "$cuts" --decode-config "$dconf" --out "$dir" --group-by accent "$@"
    return
  fi
  for set in $sets; do
    [ -f "$dir/$set/scores.json" ] || ilt evaluate --cuts "$manifests/mlc_slm_cuts_$set.jsonl.gz" \
      --decode-config "$dconf" --out "$dir/$set" --group-by accent "$@"
  done
}

log "(b) experts -> $out/experts"
ilt experts train --config "$conf_dir/experts.yaml" --model "$exp/M0" --train "$train" --dev "$dev" \
  --out "$out/experts"
total=$(python -c "import json,sys; print(sum(e['steps'] for e in json.load(open(sys.argv[1]))['languages'].values()))" "$out/experts/experts.json")
distill_steps=${distill_steps:-$total}
log "the experts ran $total steps together"

if [ "$track" = converged ]; then
  [ -f "$exp/focus/best/adapter_config.json" ] || { log "ERROR: $exp/focus: run 'bash local/evidence.sh --parts main' first"; exit 1; }
  log "(a) one shared LoRA: the main chain's Focus ($exp/focus), decoded as M1"
  shared=$exp/focus
  mkdir -p "$out/decode"; ln -sfn ../../decode/M1 "$out/decode/a-shared"
  evaluate "$out/decode/a-shared" --model "$exp/M1"  # run.sh stage 6 decoded it already
else
  log "(a) one shared LoRA, $total steps -> $out/shared"
  shared=$out/shared
  ilt train --config "$conf_dir/focus.yaml" --model "$exp/M0" --train "$train" --dev "$dev" \
    --out "$shared" --decode-config "$dconf" -o name=shared \
    -o "train.max_steps=$total" -o "train.eval_every=$((total / 2))"
fi

log "(d) distilled student, $distill_steps steps -> $out/distill"
ilt experts distill --config "$conf_dir/distill.yaml" --experts "$out/experts" --train "$train" --dev "$dev" \
  --out "$out/distill" --decode-config "$dconf" \
  -o "train.max_steps=$distill_steps" $([ "$track" = converged ] || echo "-o train.eval_every=$((distill_steps / 2))")

log "(c) fusion: ${fuse_methods} -> $out/fused/<method>, chosen by dev"
for m in ${fuse_methods//,/ }; do
  method=${m%-sum}; weights=()
  if [ "$m" != "$method" ]; then
    weights=(--weights "$(python -c "import json,sys; print(','.join(l + '=1' for l in json.load(open(sys.argv[1]))['languages']))" "$out/experts/experts.json")")
  fi
  [ -f "$out/fused/$m/fusion.json" ] || ilt experts fuse --experts "$out/experts" --method "$method" "${weights[@]}" \
    --out "$out/fused/$m" --overwrite
  cuts=$dev evaluate "$out/decode/fused-$m/dev" --model "$exp/M0" --adapter "$out/fused/$m"
done
best=$(python - "$out" ${fuse_methods//,/ } <<'PY'
import json, sys
out, methods = sys.argv[1], sys.argv[2:]
def pooled(m):
    return json.load(open(f"{out}/decode/fused-{m}/dev/scores.json"))["overall"]["error_rate"]
print(min(methods, key=pooled))
PY
)
log "best fusion on dev: $best"

log "decoding the test sets: $sets"
[ "$track" = converged ] || evaluate "$out/decode/a-shared" --model "$exp/M0" --adapter "$shared/best"
evaluate "$out/decode/b-experts" --experts "$out/experts"
evaluate "$out/decode/c-fused-$best" --model "$exp/M0" --adapter "$out/fused/$best"
ln -sfn "c-fused-$best" "$out/decode/c-fused"
evaluate "$out/decode/d-distill" --model "$exp/M0" --adapter "$out/distill/best"
evaluate "$out/decode/e-experts-detect" --experts "$out/experts" -o language=detect
evaluate "$exp/decode/M0" --model "$exp/M0"  # run.sh stage 6 decoded it already

for set in $sets; do
python - "$out" "$best" "$set" <<'PY' | tee "$out/table_$set.md"
import json, sys
out, best, test = sys.argv[1], sys.argv[2], sys.argv[3]
systems = [("M0 (no LoRA)", "../../decode/M0"), ("(a) one shared LoRA", "a-shared"), ("(b) experts, language given", "b-experts"),
           (f"(c) fused experts ({best})", f"c-fused-{best}"), ("(d) distilled student", "d-distill"),
           ("(e) experts, language detected", "e-experts-detect")]
table = {}
for name, d in systems:
    scores = json.load(open(f"{out}/decode/{d}/{test}/scores.json"))
    table[name] = {r["group"]: r["error_rate"] for r in scores["rows"] + [scores["overall"]]}
groups = [g for g in table["(a) one shared LoRA"] if g != "Overall"] + ["Overall"]
print("| system | " + " | ".join(groups) + " | rel. gain vs (a) |")
print("|---|" + "---:|" * (len(groups) + 1))
ref = table["(a) one shared LoRA"]["Overall"]
for name, row in table.items():
    gain = "" if name.startswith(("M0", "(a)")) else f"{100 * (ref - row['Overall']) / ref:+.1f}%"
    print(f"| {name} | " + " | ".join(f"{row.get(g, float('nan')):.2f}" for g in groups) + f" | {gain} |")
PY
done
