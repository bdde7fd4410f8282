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
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

track=multilingual
conf_dir=conf
fuse_methods="cat,ties-sum"  # <method>[-sum]: -sum gives each expert weight 1 (default 1/n)
distill_steps=   # default: as many as (a)

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (experts_compare.sh:${BASH_LINENO[0]}) $*" >&2; }
case $track in demo) suffix= ;; multilingual) suffix=_ml ;; *) log "ERROR: --track $track"; exit 1 ;; esac
exp=exp$suffix; manifests=data$suffix/manifests; out=$exp/experts_cmp
train=$manifests/mlc_slm_cuts_train.jsonl.gz; dev=$manifests/mlc_slm_cuts_dev.jsonl.gz
test=$manifests/mlc_slm_cuts_test.jsonl.gz; dconf=$conf_dir/decode.yaml
[ -f "$exp/M0/config.json" ] || { log "ERROR: $exp/M0: run 'bash run.sh --track $track --stop-stage 0' first"; exit 1; }

evaluate() {  # evaluate OUT ARGS...: decode + score once
  local dir=$1; shift
  [ -f "$dir/scores.json" ] || ilt evaluate --cuts "${cuts:-$test}" --decode-config "$dconf" --out "$dir" --group-by accent "$@"
}

log "(b) experts -> $out/experts"
ilt experts train --config "$conf_dir/experts.yaml" --model "$exp/M0" --train "$train" --dev "$dev" \
  --out "$out/experts"
n_experts=$(python -c "import json,sys; print(len(json.load(open(sys.argv[1]))['languages']))" "$out/experts/experts.json")
steps=$(python -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['train']['max_steps'])" "$conf_dir/experts.yaml")
total=$((n_experts * steps)); distill_steps=${distill_steps:-$total}
log "$n_experts experts x $steps steps = $total steps"

log "(a) one shared LoRA, $total steps -> $out/shared"
ilt train --config "$conf_dir/focus.yaml" --model "$exp/M0" --train "$train" --dev "$dev" \
  --out "$out/shared" --decode-config "$dconf" -o name=shared \
  -o "train.max_steps=$total" -o "train.eval_every=$((total / 2))"

log "(d) distilled student, $distill_steps steps -> $out/distill"
ilt experts distill --config "$conf_dir/distill.yaml" --experts "$out/experts" --train "$train" --dev "$dev" \
  --out "$out/distill" --decode-config "$dconf" \
  -o "train.max_steps=$distill_steps" -o "train.eval_every=$((distill_steps / 2))"

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

log "decoding the test set"
evaluate "$out/decode/a-shared/test" --model "$exp/M0" --adapter "$out/shared/best"
evaluate "$out/decode/b-experts/test" --experts "$out/experts"
evaluate "$out/decode/c-fused-$best/test" --model "$exp/M0" --adapter "$out/fused/$best"
evaluate "$out/decode/d-distill/test" --model "$exp/M0" --adapter "$out/distill/best"
evaluate "$out/decode/e-experts-detect/test" --experts "$out/experts" -o language=detect
evaluate "$exp/decode/M0/test" --model "$exp/M0"  # run.sh stage 6 decoded it already

python - "$out" "$best" <<'PY' | tee "$out/table.md"
import json, sys
out, best = sys.argv[1], sys.argv[2]
systems = [("M0 (no LoRA)", "../../decode/M0"), ("(a) one shared LoRA", "a-shared"), ("(b) experts, language given", "b-experts"),
           (f"(c) fused experts ({best})", f"c-fused-{best}"), ("(d) distilled student", "d-distill"),
           ("(e) experts, language detected", "e-experts-detect")]
table = {}
for name, d in systems:
    scores = json.load(open(f"{out}/decode/{d}/test/scores.json"))
    table[name] = {r["group"]: r["error_rate"] for r in scores["rows"] + [scores["overall"]]}
groups = [g for g in table["(a) one shared LoRA"] if g != "Overall"] + ["Overall"]
print("| system | " + " | ".join(groups) + " | rel. gain vs (a) |")
print("|---|" + "---:|" * (len(groups) + 1))
ref = table["(a) one shared LoRA"]["Overall"]
for name, row in table.items():
    gain = "" if name.startswith(("M0", "(a)")) else f"{100 * (ref - row['Overall']) / ref:+.1f}%"
    print(f"| {name} | " + " | ".join(f"{row.get(g, float('nan')):.2f}" for g in groups) + f" | {gain} |")
PY
