#!/usr/bin/env bash
# `outrigger explain`'s throughput and peak memory on a large log (benches/explain-log.py:
# about 1,000 requests a second with an outage every hour). Prints MiB/s and the peak RSS.
#   benches/explain.sh target/release/outrigger 1024      (MiB of log; the file is kept in /tmp)
set -euo pipefail
bin=$1 mib=${2:-1024}
log=/tmp/outrigger-explain-bench-$mib.log
here=$(cd "$(dirname "$0")" && pwd)
[ -s "$log" ] || python3 "$here/explain-log.py" "$mib" > "$log"
size=$(stat -c %s "$log")
for format in text json; do
  /usr/bin/time -f '%e %M' -o /tmp/explain-bench.time "$bin" explain --format "$format" "$log" > /tmp/explain-bench.out
  read -r secs rss_kib < /tmp/explain-bench.time
  python3 - "$size" "$secs" "$rss_kib" "$format" <<'PY'
import sys
size, secs, rss, fmt = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print(f"explain --format {fmt}: {size / 2**20:.0f} MiB in {secs:.1f} s = {size / 2**20 / max(secs, 0.001):.0f} MiB/s, peak RSS {rss / 1024:.1f} MiB")
PY
done
head -c 600 /tmp/explain-bench.out; echo
