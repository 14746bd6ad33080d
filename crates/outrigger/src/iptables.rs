//! `outrigger init-iptables`: the redirect rules of transparent mode, installed in the pod's
//! network namespace (by an init container with NET_ADMIN), removed with `--remove`.
//!
//! Two chains of our own in the `nat` table, per address family: `OUTRIGGER_INBOUND`
//! (jumped to from PREROUTING) sends TCP for the app's ports to the inbound listener;
//! `OUTRIGGER_OUTPUT` (from OUTPUT) sends the app's TCP to the outbound listener, except
//! outrigger's own (by uid), traffic that stays in the pod, and the excluded ports and
//! ranges. Each run creates the chains if missing and fills them afresh, so running it again
//! converges on the same rules; the jumps are added only when `-C` does not find them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use outrigger_config::{Config, Role};

const INBOUND_CHAIN: &str = "OUTRIGGER_INBOUND";
const OUTPUT_CHAIN: &str = "OUTRIGGER_OUTPUT";

/// What the command line asked for.
#[derive(clap::Args, Debug)]
pub(crate) struct Options {
    /// Config file (YAML), for the listeners' and admin ports (without it: the built-in config).
    #[arg(short, long, value_name = "FILE", env = "OUTRIGGER_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The app's ports whose inbound TCP is redirected: `8080,9090`, `*` for every port, `` for none (default: from the routes).
    #[arg(long, value_name = "PORTS")]
    pub(crate) inbound_ports: Option<String>,
    /// Inbound ports never redirected (with `--inbound-ports '*'`).
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub(crate) exclude_inbound_ports: Vec<u16>,
    /// Destination ports of the app's calls that are never redirected (the admin port never is).
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub(crate) exclude_outbound_ports: Vec<u16>,
    /// Destination ranges of the app's calls that are never redirected.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    pub(crate) exclude_outbound_cidrs: Vec<ipnet::IpNet>,
    /// The uid outrigger runs as: its own traffic is never redirected (the image runs as 65532).
    #[arg(long, value_name = "UID", default_value_t = 65532)]
    pub(crate) proxy_uid: u32,
    /// The listener to redirect to, when several of one role could take a family's connections.
    #[arg(long = "listener", value_name = "NAME")]
    pub(crate) listeners: Vec<String>,
    /// Which iptables: `auto` (the backend already holding this namespace's rules, else the system's), `nft` or `legacy`.
    #[arg(long = "iptables", value_name = "BACKEND", default_value = "auto", value_parser = ["auto", "nft", "legacy"])]
    pub(crate) backend: String,
    /// Print the commands and the rules; change nothing.
    #[arg(long, conflicts_with = "remove")]
    pub(crate) dry_run: bool,
    /// Take outrigger's chains and jumps away.
    #[arg(long)]
    pub(crate) remove: bool,
}

/// Which app ports inbound traffic is redirected for.
#[derive(Debug, PartialEq)]
enum Ports {
    /// These.
    Only(Vec<u16>),
    /// Every port except these (outrigger's own and the excluded).
    AllExcept(Vec<u16>),
}

/// The rules of one address family.
#[derive(Debug, PartialEq)]
struct Family {
    v6: bool,
    /// The inbound listener's port and the app ports redirected to it.
    inbound: Option<(u16, Ports)>,
    /// The outbound listener's port.
    outbound: Option<u16>,
}

/// Everything to install, from the config and the options.
#[derive(Debug)]
pub(crate) struct Plan {
    families: Vec<Family>,
    uid: u32,
    exclude_outbound_ports: Vec<u16>,
    exclude_outbound_cidrs: Vec<ipnet::IpNet>,
    /// Why a family or direction has no rules (said in the report).
    notes: Vec<String>,
}

impl Plan {
    pub(crate) fn new(config: &Config, o: &Options) -> Result<Plan, String> {
        let mut notes = Vec::new();
        let mut outrigger_ports: Vec<u16> = config.listeners.iter().map(|l| l.address.port()).collect();
        outrigger_ports.push(config.admin.address.port());
        let mut families = Vec::new();
        for v6 in [false, true] {
            let family = if v6 { "IPv6" } else { "IPv4" };
            let inbound_listener = pick(config, Role::Inbound, v6, &o.listeners)?;
            let outbound_listener = pick(config, Role::Outbound, v6, &o.listeners)?;
            let inbound = match inbound_listener {
                None => {
                    notes.push(format!(
                        "{family}: no inbound listener accepts {family}; inbound traffic is not redirected"
                    ));
                    None
                }
                Some(l) if l.address.ip().is_loopback() => {
                    return Err(format!(
                        "inbound listener '{}' listens on {}, but redirected inbound connections arrive on the pod's own address: \
                         listen on {} instead (TLS and `allow` rules keep it guarded)",
                        l.name,
                        l.address,
                        if v6 {
                            format!("[::]:{}", l.address.port())
                        } else {
                            format!("0.0.0.0:{}", l.address.port())
                        },
                    ));
                }
                Some(l) => {
                    let ports = inbound_ports(config, &l.name, o, &outrigger_ports)?;
                    match &ports {
                        Ports::Only(p) if p.is_empty() => {
                            notes.push(format!(
                                "{family}: no app ports to redirect inbound (give --inbound-ports)"
                            ));
                            None
                        }
                        _ => Some((l.address.port(), ports)),
                    }
                }
            };
            let outbound = match outbound_listener {
                None => {
                    notes.push(format!("{family}: no outbound listener accepts {family} on loopback; the app's calls are not redirected"));
                    None
                }
                Some(l) => Some(l.address.port()),
            };
            if inbound.is_some() || outbound.is_some() {
                families.push(Family { v6, inbound, outbound });
            }
        }
        let mut exclude_outbound_ports = o.exclude_outbound_ports.clone();
        exclude_outbound_ports.push(config.admin.address.port());
        exclude_outbound_ports.sort_unstable();
        exclude_outbound_ports.dedup();
        Ok(Plan {
            families,
            uid: o.proxy_uid,
            exclude_outbound_ports,
            exclude_outbound_cidrs: o.exclude_outbound_cidrs.clone(),
            notes,
        })
    }

    /// The rules of one family's chains, as iptables arguments after `-A CHAIN`.
    fn rules(&self, f: &Family) -> (Vec<String>, Vec<String>) {
        let mut inbound = Vec::new();
        if let Some((to, ports)) = &f.inbound {
            match ports {
                Ports::Only(ports) => {
                    for p in ports {
                        inbound.push(format!("-p tcp --dport {p} -j REDIRECT --to-ports {to}"));
                    }
                }
                Ports::AllExcept(except) => {
                    for p in except {
                        inbound.push(format!("-p tcp --dport {p} -j RETURN"));
                    }
                    inbound.push(format!("-p tcp -j REDIRECT --to-ports {to}"));
                }
            }
        }
        let mut output = Vec::new();
        if let Some(to) = f.outbound {
            output.push(format!("-m owner --uid-owner {} -j RETURN", self.uid));
            // Traffic that stays inside the pod (to loopback or to the pod's own address).
            output.push("-o lo -j RETURN".to_owned());
            output.push(format!("-d {} -j RETURN", if f.v6 { "::1/128" } else { "127.0.0.0/8" }));
            for p in &self.exclude_outbound_ports {
                output.push(format!("-p tcp --dport {p} -j RETURN"));
            }
            for net in self
                .exclude_outbound_cidrs
                .iter()
                .filter(|n| n.addr().is_ipv6() == f.v6)
            {
                output.push(format!("-d {net} -j RETURN"));
            }
            output.push(format!("-p tcp -j REDIRECT --to-ports {to}"));
        }
        (inbound, output)
    }

    /// One sentence per family of what the rules do.
    fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.families {
            let family = if f.v6 { "IPv6" } else { "IPv4" };
            let mut s = format!("{family}:");
            match &f.inbound {
                Some((to, Ports::Only(p))) => {
                    let _ = write!(s, " inbound TCP to ports {} -> :{to};", join(p));
                }
                Some((to, Ports::AllExcept(p))) => {
                    let _ = write!(s, " inbound TCP to every port but {} -> :{to};", join(p));
                }
                None => s.push_str(" inbound not redirected;"),
            }
            match f.outbound {
                Some(to) => {
                    let _ = write!(
                        s,
                        " outbound TCP -> :{to} except uid {}'s (outrigger's), traffic within the pod, ports {}",
                        self.uid,
                        join(&self.exclude_outbound_ports)
                    );
                    let nets: Vec<String> = self
                        .exclude_outbound_cidrs
                        .iter()
                        .filter(|n| n.addr().is_ipv6() == f.v6)
                        .map(ToString::to_string)
                        .collect();
                    if !nets.is_empty() {
                        let _ = write!(s, " and {}", nets.join(", "));
                    }
                    s.push('.');
                }
                None => s.push_str(" outbound not redirected."),
            }
            out.push(s);
        }
        out.extend(self.notes.iter().cloned());
        out
    }
}

fn join(ports: &[u16]) -> String {
    ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The listener of `role` that accepts connections of the family redirected to it (for
/// outbound, on loopback: OUTPUT redirects to 127.0.0.1 or ::1), narrowed to `named` when
/// more than one does.
fn pick<'c>(
    config: &'c Config,
    role: Role,
    v6: bool,
    named: &[String],
) -> Result<Option<&'c outrigger_config::Listener>, String> {
    let accepts = |a: SocketAddr| match a {
        SocketAddr::V4(a) => !v6 && (role == Role::Inbound || a.ip().is_loopback() || a.ip().is_unspecified()),
        // `[::]` takes IPv4 too (Linux's default dual stack); `[::1]` only IPv6.
        SocketAddr::V6(a) => a.ip().is_unspecified() || (v6 && (role == Role::Inbound || a.ip().is_loopback())),
    };
    let mut found: Vec<_> = config
        .listeners
        .iter()
        .filter(|l| l.role == role && accepts(l.address))
        .collect();
    if found.len() > 1 && !named.is_empty() {
        found.retain(|l| named.contains(&l.name));
    }
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        more => Err(format!(
            "{} {} listeners could take redirected {} connections ({}): name the one with --listener NAME",
            more.len(),
            role.as_str(),
            if v6 { "IPv6" } else { "IPv4" },
            more.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The app ports inbound traffic is redirected for.
fn inbound_ports(config: &Config, listener: &str, o: &Options, outrigger_ports: &[u16]) -> Result<Ports, String> {
    let excluded = |p: &u16| !o.exclude_inbound_ports.contains(p) && !outrigger_ports.contains(p);
    let ports = match o.inbound_ports.as_deref().map(str::trim) {
        Some("*") => {
            let mut except: Vec<u16> = outrigger_ports
                .iter()
                .chain(&o.exclude_inbound_ports)
                .copied()
                .collect();
            except.sort_unstable();
            except.dedup();
            return Ok(Ports::AllExcept(except));
        }
        Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|p| {
                p.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("--inbound-ports: `{p}` is not a port (write `8080,9090`, or `*` for every port)")
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        // The app's own ports: where the inbound routes send traffic on this host.
        None => config
            .routes
            .iter()
            .filter(|r| r.listener.as_deref().is_none_or(|l| l == listener))
            .filter_map(|r| config.upstream(&r.upstream))
            .flat_map(|u| &u.endpoints)
            .filter(|e| e.host == "localhost" || e.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
            .map(|e| e.port)
            .collect(),
    };
    let mut ports: Vec<u16> = ports.into_iter().filter(excluded).collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(Ports::Only(ports))
}

/// An iptables binary (`iptables-nft`, `ip6tables-legacy`, or the system's `iptables`) and
/// the commands that changed something through it.
struct Tables {
    bin: String,
    dry_run: bool,
    done: Vec<String>,
}

impl Tables {
    /// A command that reads (never run dry): its output, or `None` when it failed.
    fn query(&self, args: &[&str]) -> Option<String> {
        if self.dry_run {
            return None;
        }
        let out = Command::new(&self.bin).args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs (dry: only notes) a command that changes the rules.
    fn run(&mut self, args: &[&str]) -> Result<(), String> {
        self.done.push(format!("{} {}", self.bin, args.join(" ")));
        if self.dry_run {
            return Ok(());
        }
        let out = Command::new(&self.bin)
            .args(args)
            .output()
            .map_err(|e| format!("could not run {}: {e}", self.bin))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = if err.contains("ermission denied") || err.contains("not permitted") {
            " (it needs the NET_ADMIN and NET_RAW capabilities: run it in an init container with \
             securityContext.capabilities.add: [NET_ADMIN, NET_RAW], as root)"
        } else {
            ""
        };
        Err(format!("{} {} failed: {}{hint}", self.bin, args.join(" "), err.trim()))
    }

    /// Makes `chain` hold exactly `rules` (created if missing) and `hook` jump to it; with
    /// no rules, takes both away. A chain refilled with what it already held is not
    /// reported as a change.
    fn install(&mut self, hook: &str, chain: &str, rules: &[String]) -> Result<(), String> {
        if rules.is_empty() {
            return self.uninstall(hook, chain);
        }
        let before = self.query(&["-t", "nat", "-S", chain]);
        let mark = self.done.len();
        // What iptables prints back differs in form from what it was given (`-m tcp`), so
        // the chain is refilled and then compared with what it held.
        let first = if before.is_some() { "-F" } else { "-N" };
        self.run(&["-t", "nat", first, chain])?;
        for r in rules {
            let mut args = vec!["-t", "nat", "-A", chain];
            args.extend(r.split(' '));
            self.run(&args)?;
        }
        if before.is_some() && self.query(&["-t", "nat", "-S", chain]) == before {
            self.done.truncate(mark);
        }
        if self
            .query(&["-t", "nat", "-C", hook, "-p", "tcp", "-j", chain])
            .is_none()
        {
            self.run(&["-t", "nat", "-A", hook, "-p", "tcp", "-j", chain])?;
        }
        Ok(())
    }

    /// Takes `hook`'s jumps to `chain` and the chain away, if there.
    fn uninstall(&mut self, hook: &str, chain: &str) -> Result<(), String> {
        let jump = ["-t", "nat", "-C", hook, "-p", "tcp", "-j", chain];
        // A jump added twice by hand is taken away too.
        for _ in 0..16 {
            if self.query(&jump).is_none() {
                break;
            }
            self.run(&["-t", "nat", "-D", hook, "-p", "tcp", "-j", chain])?;
        }
        if self.query(&["-t", "nat", "-S", chain]).is_some() {
            self.run(&["-t", "nat", "-F", chain])?;
            self.run(&["-t", "nat", "-X", chain])?;
        }
        Ok(())
    }

    fn version(&self) -> String {
        self.query(&["--version"])
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| self.bin.clone())
    }
}

/// The iptables binaries to use for IPv4 and IPv6: the backend asked for, or (auto) the one
/// that already holds this namespace's nat rules, else the system's default.
fn binaries(backend: &str) -> (String, String) {
    let rules_in = |bin: &str| -> Option<usize> {
        let out = Command::new(bin).args(["-t", "nat"]).output().ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .count()
        })
    };
    let backend = match backend {
        "auto" => match (rules_in("iptables-nft-save"), rules_in("iptables-legacy-save")) {
            (Some(0) | None, Some(n)) if n > 0 => "legacy",
            (Some(n), Some(0) | None) if n > 0 => "nft",
            _ => "",
        },
        other => other,
    };
    match backend {
        "" => ("iptables".to_owned(), "ip6tables".to_owned()),
        b => (format!("iptables-{b}"), format!("ip6tables-{b}")),
    }
}

pub(crate) fn run(o: &Options) -> ExitCode {
    let loaded = match &o.config {
        Some(p) => outrigger_config::load(p),
        None => outrigger_config::builtin(),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let plan = match Plan::new(&config, o) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let (v4, v6) = binaries(&o.backend);
    match apply(&plan, o, &v4, &v6) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn apply(plan: &Plan, o: &Options, v4: &str, v6: &str) -> Result<(), String> {
    let mut done = Vec::new();
    let mut versions = Vec::new();
    for (bin, is_v6) in [(v4, false), (v6, true)] {
        let mut t = Tables {
            bin: bin.to_owned(),
            dry_run: o.dry_run,
            done: Vec::new(),
        };
        let family = plan.families.iter().find(|f| f.v6 == is_v6);
        if !o.dry_run && Command::new(bin).arg("--version").output().is_err() {
            if family.is_some() && !o.remove {
                return Err(format!(
                    "{bin} is not installed (Debian: apt-get install iptables); it is needed for the {} rules",
                    if is_v6 { "IPv6" } else { "IPv4" }
                ));
            }
            continue;
        }
        let result = match family.filter(|_| !o.remove) {
            Some(f) => {
                let (inbound, output) = plan.rules(f);
                t.install("PREROUTING", INBOUND_CHAIN, &inbound)
                    .and_then(|()| t.install("OUTPUT", OUTPUT_CHAIN, &output))
            }
            None => t
                .uninstall("PREROUTING", INBOUND_CHAIN)
                .and_then(|()| t.uninstall("OUTPUT", OUTPUT_CHAIN)),
        };
        // What was done is said even when a later command failed.
        for c in &t.done {
            println!("+ {c}");
        }
        result?;
        done.append(&mut t.done);
        if !o.dry_run {
            versions.push(t.version());
        }
    }
    let with = if versions.is_empty() {
        String::new()
    } else {
        format!(" ({})", versions.join("; "))
    };
    if o.dry_run {
        println!("Dry run: nothing was changed. The commands above install these rules in an empty namespace:");
    } else if o.remove {
        let what = if done.is_empty() {
            "No outrigger redirect rules were installed; nothing changed"
        } else {
            "Removed outrigger's redirect rules"
        };
        println!("{what}{with}.");
        return Ok(());
    } else if done.is_empty() {
        println!("outrigger's redirect rules were already in place; nothing changed{with}:");
    } else {
        println!("Installed outrigger's redirect rules{with}:");
    }
    for line in plan.describe() {
        println!("  {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            config: None,
            inbound_ports: None,
            exclude_inbound_ports: vec![],
            exclude_outbound_ports: vec![22],
            exclude_outbound_cidrs: vec!["169.254.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
            proxy_uid: 65532,
            listeners: vec![],
            backend: "auto".into(),
            dry_run: true,
            remove: false,
        }
    }

    fn config(listeners: &str) -> Config {
        let yaml = format!(
            "listeners: {listeners}\nadmin: {{address: 127.0.0.1:15090}}\nupstreams: {{app: {{endpoints: [127.0.0.1:8080, localhost:9090]}}, other: {{endpoints: [10.0.0.1:80]}}}}\n\
             routes: [{{name: a, match: {{path_prefix: /}}, upstream: app, listener: in}}, {{name: b, match: {{path_prefix: /}}, upstream: other, listener: out}}]\n"
        );
        outrigger_config::from_yaml(&yaml, "t.yaml", &|_| None).unwrap()
    }

    #[test]
    fn the_plan_redirects_the_apps_ports_and_its_calls_with_every_exclusion() {
        let c = config(
            "[{name: in, role: inbound, address: 0.0.0.0:15001}, {name: out, role: outbound, address: 127.0.0.1:15002}]",
        );
        let plan = Plan::new(&c, &options()).unwrap();
        assert_eq!(plan.families.len(), 1, "{plan:?}");
        let (inbound, output) = plan.rules(&plan.families[0]);
        assert_eq!(
            inbound,
            [
                "-p tcp --dport 8080 -j REDIRECT --to-ports 15001",
                "-p tcp --dport 9090 -j REDIRECT --to-ports 15001"
            ]
        );
        assert_eq!(
            output,
            [
                "-m owner --uid-owner 65532 -j RETURN",
                "-o lo -j RETURN",
                "-d 127.0.0.0/8 -j RETURN",
                "-p tcp --dport 22 -j RETURN",
                "-p tcp --dport 15090 -j RETURN",
                "-d 169.254.0.0/16 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 15002"
            ]
        );
        assert!(plan.describe().iter().any(|l| l.contains("IPv6: no inbound listener")));
    }

    #[test]
    fn every_port_leaves_outriggers_own_and_the_excluded_alone() {
        let c = config(
            "[{name: in, role: inbound, address: \"[::]:15001\"}, {name: out, role: outbound, address: \"[::1]:15002\"}, {name: out4, role: outbound, address: 127.0.0.1:15003}]",
        );
        let mut o = options();
        o.inbound_ports = Some("*".into());
        o.exclude_inbound_ports = vec![22];
        let plan = Plan::new(&c, &o).unwrap();
        let v4 = plan.families.iter().find(|f| !f.v6).unwrap();
        let v6 = plan.families.iter().find(|f| f.v6).unwrap();
        assert_eq!(v4.outbound, Some(15003));
        assert_eq!(v6.outbound, Some(15002));
        let (inbound, output) = plan.rules(v6);
        assert_eq!(inbound.last().unwrap(), "-p tcp -j REDIRECT --to-ports 15001");
        for p in [22, 15001, 15002, 15003, 15090] {
            assert!(
                inbound.contains(&format!("-p tcp --dport {p} -j RETURN")),
                "{inbound:?}"
            );
        }
        assert!(output.contains(&"-d ::1/128 -j RETURN".to_owned()));
        assert!(output.contains(&"-d fd00::/8 -j RETURN".to_owned()));
        assert!(!output.iter().any(|r| r.contains("169.254")));
    }

    #[test]
    fn bad_settings_are_refused_with_the_fix() {
        let c = config(
            "[{name: in, role: inbound, address: 127.0.0.1:15001}, {name: out, role: outbound, address: 127.0.0.1:15002}]",
        );
        let e = Plan::new(&c, &options()).unwrap_err();
        assert!(e.contains("listen on 0.0.0.0:15001"), "{e}");
        let c = config(
            "[{name: in, role: inbound, address: 0.0.0.0:15001}, {name: out, role: outbound, address: 127.0.0.1:15002}, {name: out2, role: outbound, address: 127.0.0.1:15003}]",
        );
        let e = Plan::new(&c, &options()).unwrap_err();
        assert!(e.contains("--listener"), "{e}");
        let mut o = options();
        o.listeners = vec!["out2".into()];
        assert_eq!(Plan::new(&c, &o).unwrap().families[0].outbound, Some(15003));
        o.inbound_ports = Some("80,x".into());
        assert!(Plan::new(&c, &o).unwrap_err().contains("`x` is not a port"));
    }
}
