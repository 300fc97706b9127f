//! The agent-owned block of `/etc/hosts`: the istiod address and the egress hostnames of the
//! matching Sidecar resource, pointing at the egress bind address. Lines outside the block are
//! never touched; the file is replaced atomically.

use std::path::Path;

use crate::api::protocol::HostsEntry;
use crate::atomic;

pub const BEGIN_MARKER: &str =
    "# BEGIN onboarding-agent: managed block, rewritten by the agent; edits here are lost";
pub const END_MARKER: &str = "# END onboarding-agent";

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error(
        "{path}: line {line} opens the onboarding-agent block but it is never closed by {END_MARKER:?}; fix the file by hand (the agent will not guess which lines are its own)"
    )]
    Unclosed { path: String, line: usize },
    #[error(
        "{path}: {END_MARKER:?} at line {line} without a block opening before it; fix the file by hand"
    )]
    Unopened { path: String, line: usize },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
}

/// An entry the agent refused to write, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub entry: String,
    pub reason: String,
}

/// A name the bootstrap asks the agent to resolve has no address here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot resolve {name}: {reason}")]
pub struct ResolveError {
    pub name: String,
    pub reason: String,
}

/// Replaces entries that name a DNS name to `resolve` by one entry per address that name
/// has on this host (IPv4 first, as a resolver would try them). Fails when a name does not
/// resolve: the caller then keeps the old block rather than lose the istiod address.
pub fn resolve_entries(
    entries: &[HostsEntry],
    lookup: impl Fn(&str) -> std::io::Result<Vec<std::net::IpAddr>>,
) -> Result<Vec<HostsEntry>, ResolveError> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Some(name) = e.resolve.as_deref().filter(|n| !n.is_empty()) else {
            out.push(e.clone());
            continue;
        };
        let mut ips = lookup(name).map_err(|err| ResolveError {
            name: name.to_string(),
            reason: err.to_string(),
        })?;
        if ips.is_empty() {
            return Err(ResolveError {
                name: name.to_string(),
                reason: "no addresses".into(),
            });
        }
        ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
        ips.dedup();
        for ip in ips {
            out.push(HostsEntry {
                ip: ip.to_string(),
                hostnames: e.hostnames.clone(),
                resolve: None,
            });
        }
    }
    Ok(out)
}

/// Looks a name up with the host's resolver (getaddrinfo).
pub fn system_lookup(name: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
    use std::net::ToSocketAddrs;
    Ok((name, 0u16).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// The block's lines for `entries` (nothing when there are no entries). An entry whose
/// address is not an IP is rejected whole, and a name that is not a DNS name is rejected on
/// its own (its valid neighbours on the same address are still written): a newline or `#` in
/// a name from the endpoint must not be able to inject lines into the host's resolver config,
/// and one bad name must not cut the workload off the others.
pub fn render_block(entries: &[HostsEntry]) -> (Vec<String>, Vec<Rejected>) {
    let mut lines = Vec::new();
    let mut rejected = Vec::new();
    for e in entries {
        let shown = format!("{} {}", e.ip, e.hostnames.join(" "));
        if e.ip.parse::<std::net::IpAddr>().is_err() {
            rejected.push(Rejected {
                entry: shown,
                reason: "not an IP address".into(),
            });
            continue;
        }
        let mut names = Vec::with_capacity(e.hostnames.len());
        for h in &e.hostnames {
            if crate::agent::config::is_valid_dns_name(h) {
                names.push(h.as_str());
            } else {
                rejected.push(Rejected {
                    entry: format!("{} {h}", e.ip),
                    reason: format!("{h:?} is not a DNS name"),
                });
            }
        }
        if names.is_empty() {
            if e.hostnames.is_empty() {
                rejected.push(Rejected {
                    entry: shown,
                    reason: "no hostnames".into(),
                });
            }
            continue;
        }
        lines.push(format!("{} {}", e.ip, names.join(" ")));
    }
    if lines.is_empty() {
        return (Vec::new(), rejected);
    }
    let mut block = Vec::with_capacity(lines.len() + 2);
    block.push(BEGIN_MARKER.to_string());
    block.extend(lines);
    block.push(END_MARKER.to_string());
    (block, rejected)
}

fn is_begin(line: &str) -> bool {
    line.trim_end().starts_with("# BEGIN onboarding-agent")
}

fn is_end(line: &str) -> bool {
    line.trim_end() == END_MARKER
}

/// `existing` with the agent's block replaced by `block` (in place when there was one,
/// appended otherwise; removed when `block` is empty). Everything else is kept byte for byte.
pub fn apply(path: &str, existing: &str, block: &[String]) -> Result<String, HostsError> {
    let lines: Vec<&str> = existing.split_inclusive('\n').collect();
    let mut before: Vec<&str> = Vec::new();
    let mut after: Vec<&str> = Vec::new();
    let mut found = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if !found && is_begin(line) {
            let end =
                lines[i + 1..]
                    .iter()
                    .position(|l| is_end(l))
                    .ok_or(HostsError::Unclosed {
                        path: path.into(),
                        line: i + 1,
                    })?;
            found = true;
            i += end + 2;
            continue;
        }
        if is_begin(line) {
            // A second block: drop it as well, it can only be ours from an older run.
            let end =
                lines[i + 1..]
                    .iter()
                    .position(|l| is_end(l))
                    .ok_or(HostsError::Unclosed {
                        path: path.into(),
                        line: i + 1,
                    })?;
            i += end + 2;
            continue;
        }
        if is_end(line) {
            return Err(HostsError::Unopened {
                path: path.into(),
                line: i + 1,
            });
        }
        if found {
            after.push(line);
        } else {
            before.push(line);
        }
        i += 1;
    }
    let mut out = String::with_capacity(existing.len() + 64);
    for l in &before {
        out.push_str(l);
    }
    if !block.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for l in block {
            out.push_str(l);
            out.push('\n');
        }
    }
    for l in &after {
        out.push_str(l);
    }
    Ok(out)
}

/// Rewrites the block in the hosts file at `path`. Returns whether the file changed.
pub fn update_file(
    path: &Path,
    entries: &[HostsEntry],
) -> Result<(bool, Vec<Rejected>), HostsError> {
    let shown = path.display().to_string();
    let (existing, mode) = match std::fs::read_to_string(path) {
        Ok(text) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o644);
            (text, mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0o644),
        Err(source) => {
            return Err(HostsError::Read {
                path: shown,
                source,
            });
        }
    };
    let (block, rejected) = render_block(entries);
    let updated = apply(&shown, &existing, &block)?;
    if updated == existing {
        return Ok((false, rejected));
    }
    atomic::write_file(path, updated.as_bytes(), mode)?;
    Ok((true, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ip: &str, names: &[&str]) -> HostsEntry {
        HostsEntry {
            ip: ip.into(),
            hostnames: names.iter().map(|s| s.to_string()).collect(),
            resolve: None,
        }
    }

    const USER: &str =
        "127.0.0.1 localhost\n::1 localhost ip6-localhost\n# my comment\n10.0.0.9 db.internal\n";

    #[test]
    fn appends_then_replaces_in_place_then_removes() {
        let (block, _) = render_block(&[entry(
            "127.0.0.2",
            &["reviews.bookinfo.svc", "details.bookinfo"],
        )]);
        let once = apply("h", USER, &block).unwrap();
        assert!(once.starts_with(USER), "{once}");
        assert!(once.ends_with(&format!(
            "{BEGIN_MARKER}\n127.0.0.2 reviews.bookinfo.svc details.bookinfo\n{END_MARKER}\n"
        )));
        // Idempotent.
        assert_eq!(apply("h", &once, &block).unwrap(), once);

        // The user adds a line after our block; a new block keeps its place and their line.
        let edited = format!("{once}192.168.0.1 printer\n");
        let (block2, _) = render_block(&[entry("127.0.0.2", &["ratings.bookinfo"])]);
        let twice = apply("h", &edited, &block2).unwrap();
        assert_eq!(
            twice,
            format!(
                "{USER}{BEGIN_MARKER}\n127.0.0.2 ratings.bookinfo\n{END_MARKER}\n192.168.0.1 printer\n"
            )
        );

        let removed = apply("h", &twice, &[]).unwrap();
        assert_eq!(removed, format!("{USER}192.168.0.1 printer\n"));
    }

    #[test]
    fn file_without_trailing_newline_is_kept_intact() {
        let (block, _) = render_block(&[entry("10.0.0.1", &["istiod.istio-system.svc"])]);
        let out = apply("h", "127.0.0.1 localhost", &block).unwrap();
        assert!(out.starts_with("127.0.0.1 localhost\n# BEGIN"), "{out}");
    }

    #[test]
    fn broken_markers_are_refused() {
        let unclosed = format!("{USER}{BEGIN_MARKER}\n1.2.3.4 x\n");
        let e = apply("/etc/hosts", &unclosed, &[]).unwrap_err();
        assert!(e.to_string().contains("/etc/hosts: line 5"), "{e}");
        let unopened = format!("{USER}{END_MARKER}\n");
        assert!(matches!(
            apply("h", &unopened, &[]),
            Err(HostsError::Unopened { line: 5, .. })
        ));
    }

    #[test]
    fn injection_is_rejected() {
        let (block, rejected) = render_block(&[
            entry("127.0.0.2", &["ok.example"]),
            entry("127.0.0.2", &["evil\n8.8.8.8 bank.example"]),
            entry("not-ip", &["x.example"]),
            entry("127.0.0.3", &[]),
        ]);
        assert_eq!(block.len(), 3);
        assert_eq!(rejected.len(), 3);
    }

    #[test]
    fn a_bad_name_is_skipped_and_its_neighbours_kept() {
        let (block, rejected) = render_block(&[
            entry("127.0.0.1", &["istiod.istio-system.svc"]),
            entry(
                "127.0.0.2",
                &[
                    "details.bookinfo.svc",
                    "evil\n8.8.8.8 bank.example",
                    "ratings.bookinfo.svc",
                    "#x",
                ],
            ),
            entry("127.0.0.3", &["only bad"]),
        ]);
        assert_eq!(
            block,
            vec![
                BEGIN_MARKER.to_string(),
                "127.0.0.1 istiod.istio-system.svc".to_string(),
                "127.0.0.2 details.bookinfo.svc ratings.bookinfo.svc".to_string(),
                END_MARKER.to_string(),
            ]
        );
        let reasons: Vec<_> = rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "\"evil\\n8.8.8.8 bank.example\" is not a DNS name",
                "\"#x\" is not a DNS name",
                "\"only bad\" is not a DNS name",
            ]
        );
        assert_eq!(rejected[1].entry, "127.0.0.2 #x");
    }

    #[test]
    fn resolves_names_on_the_host() {
        let mut gw = entry("", &["istiod.istio-system.svc"]);
        gw.resolve = Some("eastwest.example".into());
        let entries = vec![entry("127.0.0.2", &["a.example"]), gw];
        let lookup = |name: &str| -> std::io::Result<Vec<std::net::IpAddr>> {
            assert_eq!(name, "eastwest.example");
            Ok(vec![
                "2001:db8::1".parse().unwrap(),
                "203.0.113.7".parse().unwrap(),
            ])
        };
        let resolved = resolve_entries(&entries, lookup).unwrap();
        let ips: Vec<_> = resolved.iter().map(|e| e.ip.as_str()).collect();
        assert_eq!(ips, ["127.0.0.2", "203.0.113.7", "2001:db8::1"]);
        assert!(resolved.iter().all(|e| e.resolve.is_none()));

        let failing = |_: &str| -> std::io::Result<Vec<std::net::IpAddr>> {
            Err(std::io::Error::other("NXDOMAIN"))
        };
        let e = resolve_entries(&entries, failing).unwrap_err().to_string();
        assert!(
            e.contains("eastwest.example") && e.contains("NXDOMAIN"),
            "{e}"
        );
        // The real resolver knows localhost.
        assert!(!system_lookup("localhost").unwrap().is_empty());
    }

    #[test]
    fn update_file_reports_changes_and_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etc/hosts");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, USER).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let entries = [entry("127.0.0.2", &["a.example"])];
        assert!(update_file(&p, &entries).unwrap().0);
        assert!(!update_file(&p, &entries).unwrap().0);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(USER));
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // A missing hosts file is created only when there is something to write.
        let missing = dir.path().join("other/hosts");
        assert!(!update_file(&missing, &[]).unwrap().0);
        assert!(!missing.exists());
    }
}
