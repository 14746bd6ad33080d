//! Driving load (wrk for HTTP/1.1, h2load for HTTP/2, our fixed-rate probe for latency) while
//! watching the proxy process: CPU seconds from `/proc/PID/stat`, RSS from `/proc/PID/status`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::tools::{Tools, pinned};

/// One measurement.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) rps: f64,
    /// Requests per CPU-second of the proxy process (0 for `direct`).
    pub(crate) per_cpu_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) errors: u64,
    /// Largest RSS seen during the run, KiB.
    pub(crate) rss_max_kib: u64,
}

/// CPU time (user + system, all threads) of `pid`, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of `pid`, KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests":%d,"duration_us":%d,"errors":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// Runs `cmd` (the load generator) to completion while sampling the proxy's RSS; returns its
/// stdout, the proxy's CPU seconds used and the largest RSS seen.
fn watched(mut cmd: Command, proxy: Option<u32>) -> Result<(String, f64, u64), String> {
    let cpu0 = proxy.map_or(0.0, cpu_seconds);
    let out_file = tempfile_path("load-out");
    let out = std::fs::File::create(&out_file).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the load generator: {e}"))?;
    let mut rss_max = 0;
    loop {
        if let Some(pid) = proxy {
            rss_max = rss_max.max(rss_kib(pid));
        }
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cpu = proxy.map_or(0.0, |p| cpu_seconds(p) - cpu0);
    let text = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    Ok((text, cpu, rss_max))
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("outrigger-bench-{}-{name}", std::process::id()))
}

/// wrk: HTTP/1.1 keep-alive, `conns` connections, one thread, for `secs`.
pub(crate) fn wrk(tools: &Tools, url: &str, conns: u32, secs: u64, proxy: Option<u32>) -> Result<Sample, String> {
    let wrk = tools.wrk.as_ref().ok_or("wrk is not installed")?;
    let script = tempfile_path("wrk.lua");
    std::fs::write(&script, WRK_SCRIPT).map_err(|e| e.to_string())?;
    let mut cmd = pinned(tools, "0", wrk);
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--timeout",
        "10s",
        "-s",
    ])
    .arg(&script)
    .arg(url);
    let (text, cpu, rss) = watched(cmd, proxy)?;
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("wrk printed no result: {text}"))?;
    let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let requests = n("requests");
    Ok(Sample {
        rps: requests / (n("duration_us") / 1e6).max(1e-9),
        per_cpu_s: if cpu > 0.0 { requests / cpu } else { 0.0 },
        p50_ms: n("p50") / 1000.0,
        p99_ms: n("p99") / 1000.0,
        p999_ms: n("p999") / 1000.0,
        errors: n("errors") as u64,
        rss_max_kib: rss,
    })
}

/// h2load: HTTP/2 prior knowledge, `conns` connections × `streams` concurrent streams.
pub(crate) fn h2load(
    tools: &Tools,
    url: &str,
    conns: u32,
    streams: u32,
    secs: u64,
    proxy: Option<u32>,
) -> Result<Sample, String> {
    let h2load = tools.h2load.as_ref().ok_or("h2load is not installed")?;
    let mut cmd = pinned(tools, "0", h2load);
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-m{streams}"),
        "-D",
        &secs.to_string(),
        url,
    ]);
    let (text, cpu, rss) = watched(cmd, proxy)?;
    // "finished in 8.00s, 41234.50 req/s, 1.23MB/s" and
    // "requests: 329876 total, 329976 started, 329876 done, 329876 succeeded, 0 failed, 0 errored, 0 timeout"
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.trim_end_matches(" req/s").parse::<f64>().ok())
        .ok_or_else(|| format!("h2load printed no rate: {text}"))?;
    let field = |word: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("requests: "))
            .and_then(|l| l.split(", ").find(|p| p.ends_with(word)))
            .and_then(|p| p.split(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let succeeded = field("succeeded");
    Ok(Sample {
        rps,
        per_cpu_s: if cpu > 0.0 { succeeded / cpu } else { 0.0 },
        errors: (field("failed") + field("errored")) as u64,
        rss_max_kib: rss,
        ..Sample::default()
    })
}

/// The fixed-rate probe (our own binary, pinned to core 0).
pub(crate) fn probe(tools: &Tools, url: &str, rate: u32, secs: u64, proxy: Option<u32>) -> Result<Sample, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = pinned(tools, "0", &me);
    cmd.args([
        "probe",
        "--url",
        url,
        "--rate",
        &rate.to_string(),
        "--secs",
        &secs.to_string(),
    ]);
    let (text, cpu, rss) = watched(cmd, proxy)?;
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| format!("probe output: {e}: {text}"))?;
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok(Sample {
        rps: n("achieved_rps"),
        per_cpu_s: if cpu > 0.0 { n("counted") / cpu } else { 0.0 },
        p50_ms: n("p50_us") / 1000.0,
        p99_ms: n("p99_us") / 1000.0,
        p999_ms: n("p999_us") / 1000.0,
        errors: n("errors") as u64,
        rss_max_kib: rss,
    })
}

/// Holds `conns` idle keep-alive connections open through the proxy (each has sent one request)
/// and returns the proxy's RSS with them open.
pub(crate) fn rss_with_open_connections(addr: std::net::SocketAddr, conns: usize, pid: u32) -> u64 {
    use std::io::{Read, Write};
    let mut open = Vec::with_capacity(conns);
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..conns {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            break;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n");
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        open.push(s);
        if Instant::now() > deadline {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_kib(pid);
    drop(open);
    rss
}

/// Lines in a file (access-log lines written during a run).
pub(crate) fn count_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count())
}
