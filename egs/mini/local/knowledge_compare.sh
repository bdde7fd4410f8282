#!/usr/bin/env bash
# Feedback and Fix with the knowledge sets of stage 2 against without them (issue #12).
# After the main chain (run.sh: M0 -> M1 -> M2 -> M3 with the sets), it trains a second
# Feedback and Fix from the same M1 with conf/feedback.yaml and conf/fix.yaml minus every
# source under ${ILT_KNOWLEDGE_DIR} (nothing else changes: weights, steps, seed, the pseudo-label
# vote), then scores M1, M2 and M3 of both chains on dev and test, per language, in one table.
#
#   bash run.sh && bash local/knowledge_compare.sh    # demo track -> exp/knowledge_cmp/table.md
#   bash local/knowledge_compare.sh --track converged # after local/evidence.sh --parts main
#
# converged: conf_converged/, the sets test test2 test3, the main chain's decodes reused (grouped by
# accent, as evidence.sh's tables read them), --round-overrides (e.g. the main Fix's
# "fix:select.include_start=false") passed to the second chain's run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

track=demo
conf_dir=        # default: conf, or conf_converged for --track converged
sets=            # default: "dev test", or "test test2 test3" for --track converged
round_overrides=

. ../../tools/parse_options.sh

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (knowledge_compare.sh:${BASH_LINENO[0]}) $*" >&2; }
group_by=language
case $track in
  demo) suffix= ;;
  multilingual) suffix=_ml ;;
  converged) suffix=_conv; conf_dir=${conf_dir:-conf_converged}; sets=${sets:-test test2 test3}; group_by=accent ;;
  *) log "ERROR: --track $track: choose demo, multilingual or converged"; exit 1 ;;
esac
conf_dir=${conf_dir:-conf}; sets=${sets:-dev test}
exp=exp$suffix; manifests=data$suffix/manifests; off=$exp/knowledge_off; out=$exp/knowledge_cmp
[ -f "$exp/M3/config.json" ] || { log "ERROR: $exp/M3: run 'bash run.sh --track $track' first"; exit 1; }

log "$off/conf: $conf_dir without the knowledge sets"
mkdir -p "$off/conf"
cp "$conf_dir"/*.yaml "$off/conf/"
python - "$conf_dir" "$off/conf" <<'PY'
import sys
from pathlib import Path
import yaml
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for name in ("feedback.yaml", "fix.yaml"):
    cfg = yaml.safe_load((src / name).read_text())
    data = cfg["task"]["data"]
    kept = [d for d in data if "ILT_KNOWLEDGE_DIR" not in str(d["cuts"])]
    if len(kept) == len(data):
        sys.exit(f"{src / name}: task.data has no source under ILT_KNOWLEDGE_DIR: nothing to compare")
    cfg["task"]["data"] = kept
    (dst / name).write_text(f"# {src / name} without its knowledge sets (local/knowledge_compare.sh)\n"
                            + yaml.safe_dump(cfg, sort_keys=False))
    print(f"{name}: {len(data) - len(kept)} knowledge source(s) left out, {len(kept)} kept", file=sys.stderr)
PY

log "the second chain in $off: M1 linked from $exp, then Feedback and Fix without the sets"
bash run.sh --track "$track" --exp-dir "$off" --stage 3 --stop-stage 3 --reuse-exp "$exp"
# (an empty --round-overrides would replace the track's own, e.g. the demo's step counts)
bash run.sh --track "$track" --exp-dir "$off" --conf-dir "$off/conf" --stage 4 --stop-stage 5 \
  ${round_overrides:+--round-overrides "$round_overrides"}

for chain in with without; do
  dir=$exp; [ $chain = with ] || dir=$off
  for i in 1 2 3; do
    [ $chain = without ] && [ $i -eq 1 ] && continue  # the same M1
    for s in $sets; do
      d=$out/$chain/M$i/$s
      if [ $chain = with ] && [ $group_by = accent ] && [ -f "$exp/decode/M$i/$s/scores.json" ]; then
        mkdir -p "$(dirname "$d")"; ln -sfn "$(realpath "$exp/decode/M$i/$s")" "$d"; continue  # run.sh's decode
      fi
      [ -f "$d/scores.json" ] || ilt evaluate --model "$dir/M$i" --cuts "$manifests/mlc_slm_cuts_$s.jsonl.gz" \
        --decode-config "$conf_dir/decode.yaml" --out "$d" --group-by $group_by
    done
  done
done

python - "$out" $sets <<'PY' | tee "$out/table.md"
import json, sys
out, sets = sys.argv[1], sys.argv[2:]
rows = [("M1 (Focus)", "with/M1"), ("M2 Feedback, with the sets", "with/M2"),
        ("M2 Feedback, without", "without/M2"), ("M3 Fix, with the sets", "with/M3"),
        ("M3 Fix, without", "without/M3")]
for s in sets:
    table = {}
    for name, d in rows:
        scores = json.load(open(f"{out}/{d}/{s}/scores.json"))
        table[name] = {r["group"]: r["error_rate"] for r in scores["rows"] + [scores["overall"]]}
    groups = [g for g in table["M1 (Focus)"] if g != "Overall"] + ["Overall"]
    print(f"\n{s} (WER %, CER for ja/ko/th)\n")
    print("| model | " + " | ".join(groups) + " |")
    print("|---|" + "---:|" * len(groups))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row.get(g, float('nan')):.2f}" for g in groups) + " |")
PY
log "what stage 2 kept"
python local/knowledge_report.py "${ILT_KNOWLEDGE_DIR:-data$suffix/extra/knowledge}" | tee "$out/knowledge_report.md"
