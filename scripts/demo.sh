#!/usr/bin/env bash
# The demo: start the provider simulator, summarise this project's own source files with
# `llmbatch run` (progress bar, retries, pacing learned from the server), print the stats,
# write an HTML report of the run (plots; opens offline), stop the simulator. No API key and
# no network needed. The simulator's model is priced like gpt-4o-mini (--price-in/--price-out)
# so that the stats and the report show what the run would cost.
set -euo pipefail
. "$(dirname "$0")/_venv.sh" fast,report
mkdir -p demo-out
rm -f demo-out/summaries.jsonl demo-out/report.html
.venv/bin/llmbatch simulate --port 0 --latency-ms 150 --latency-jitter-ms 50 --rpm 600 \
  --fail-rate 0.05 --reset-rate 0.02 --seed 42 > demo-out/simulator.log 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening on" demo-out/simulator.log && break
  sleep 0.1
done
url=$(sed -n 's/^listening on //p' demo-out/simulator.log)
echo "simulator at $url: 600 req/min, 150 ms latency, 5% server errors, 2% connection resets" >&2
status=0
.venv/bin/llmbatch run --template "Summarize this file ({path}) in JSON: {content}" \
  --files "src/**/*.py" --json --max-tokens 200 \
  -o demo-out/summaries.jsonl --base-url "$url/v1" --model sim-1 \
  --concurrency 16 --error-log demo-out/logs --prompt-section file_summary \
  --price-in 0.15 --price-out 0.60 --report demo-out/report.html || status=$?
echo "results: demo-out/summaries.jsonl (rerun the same command to resume; nothing is resent)" >&2
echo "report:  $(pwd)/demo-out/report.html (open it in a browser; works offline)" >&2
.venv/bin/python - <<'PY'
import json
for line in list(open("demo-out/summaries.jsonl"))[:3]:
    r = json.loads(line)
    if r["error"] is None:
        summary = json.loads(r["response"]["body"]["choices"][0]["message"]["content"])
        print(f"{r['custom_id']}: {summary['summary']}")
PY
exit $status
