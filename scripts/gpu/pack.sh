#!/usr/bin/env bash
# Pack a lease's run folders for the trip back: the small files the figures are read from (manifests,
# summaries, stats, loss curves, logs), never samples, weights or compile caches. Run it in every
# progress call of a lease, not only at the end: a machine given back between two calls takes every
# run folder on it along, and only what an earlier call packed into its $OUT comes back.
#   bash scripts/gpu/pack.sh /root/bench "$OUT/bench.tgz"
set -euo pipefail
runs="${1:?usage: pack.sh RUNS OUT.tgz}" out="${2:?usage: pack.sh RUNS OUT.tgz}"
[ -d "$runs" ] || { echo "error: no run folder $runs" >&2; exit 2; }
out="$(realpath -m "$out")"
cd "$runs"
find . \( -name 'vllm-cache*' -o -name 'inductor-*' \) -prune -o -type f \( -name manifest.json -o -name '*summary.json' \
  -o -name stats.json -o -name decode_steps.json -o -name train_log.jsonl -o -name '*.log' -o -name 'log-*' \) -print |
  sort > "$out.list"  # *.log: a training run's openrlhf.log too, while it is still in OUT.tmp
# a stage still running may grow or rename a file while tar reads it: tar then exits 1 (changed) or
# warns (gone, with --ignore-failed-read) and packs the rest; anything worse is an error
rc=0
tar --ignore-failed-read -czf "$out.part" -T "$out.list" || rc=$?
[ "$rc" -le 1 ] || { echo "error: tar failed ($rc) packing $runs" >&2; rm -f "$out.part" "$out.list"; exit "$rc"; }
rm "$out.list"
mv "$out.part" "$out"
echo "packed $(tar -tzf "$out" | wc -l) files of $runs into $out"
