//! The hosts block of the bootstrap: istiod's name (istioctl's `hosts` file) and, in NONE
//! interception mode, the Sidecar's egress hostnames. Pure; the agent writes /etc/hosts.

use std::net::IpAddr;

use super::{BootstrapInput, DEFAULT_EGRESS_BIND, Gateway, InterceptionMode, is_dns_name};
use crate::api::istio::Sidecar;
use crate::api::protocol::HostsEntry;

/// Every hosts entry of one bootstrap and the Sidecar problems met on the way (step of
/// [`super::compute`]). Mirrors istioctl's `hosts` file, which maps istiod's name to the
/// `--ingress-ip`, then adds the egress hosts (our own: istioctl has no NONE mode).
pub(super) fn hosts_entries(
    input: &BootstrapInput<'_>,
    istiod_host: &str,
) -> (Vec<HostsEntry>, Vec<String>) {
    let mut hosts = Vec::new();
    let mut warnings = Vec::new();
    let mut taken = vec![istiod_host.to_string()];
    match &input.istiod_gateway {
        Some(Gateway::Ip(ip)) => hosts.push(HostsEntry {
            ip: ip.to_string(),
            hostnames: vec![istiod_host.to_string()],
            resolve: None,
        }),
        // FIX: istioctl writes an empty hosts file for a gateway known only by a hostname
        // (istio#31624); the agent resolves the name on the VM instead.
        Some(Gateway::Hostname(name)) => hosts.push(HostsEntry {
            ip: String::new(),
            hostnames: vec![istiod_host.to_string()],
            resolve: Some(name.clone()),
        }),
        None => {}
    }
    if input.interception_mode == InterceptionMode::None
        && let Some(sidecar) = input.sidecar
    {
        let (entries, problems) = egress_hosts(sidecar, &mut taken);
        hosts.extend(entries);
        warnings.extend(problems);
    }
    (hosts, warnings)
}

/// Hosts entries for the Sidecar's egress listeners in NONE mode: each concrete hostname of a
/// listener maps to the address the listener binds (127.0.0.1 when the Sidecar names none),
/// so the application reaches the listener by name. Wildcards cannot go into /etc/hosts and
/// are skipped; a name already claimed (istiod, an earlier listener) keeps its first address.
///
/// A host that is neither a wildcard nor a DNS name, or a `bind` that is not an IP address,
/// is left out and reported (second value, one message per problem naming the Sidecar and
/// the field): its valid neighbours are still written.
pub fn egress_hosts(sidecar: &Sidecar, taken: &mut Vec<String>) -> (Vec<HostsEntry>, Vec<String>) {
    let mut by_ip: Vec<HostsEntry> = Vec::new();
    let mut problems = Vec::new();
    let resource = format!(
        "Sidecar {}/{}",
        sidecar.metadata.namespace, sidecar.metadata.name
    );
    for (i, listener) in sidecar.spec.egress.iter().enumerate() {
        if listener
            .capture_mode
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("IPTABLES"))
        {
            // Traffic to this listener is captured by iptables, not reached by name.
            continue;
        }
        let ip = match listener.bind.as_deref() {
            None | Some("") => DEFAULT_EGRESS_BIND.to_string(),
            Some(b) if b.starts_with("unix://") => DEFAULT_EGRESS_BIND.to_string(),
            Some(b) => match b.parse::<IpAddr>() {
                Ok(ip) => ip.to_string(),
                Err(_) => {
                    problems.push(format!(
                        "{resource}: spec.egress[{i}].bind: {b:?} is not an IP address; \
                         the listener's hosts are not written to /etc/hosts"
                    ));
                    continue;
                }
            },
        };
        for (j, host) in listener.hosts.iter().enumerate() {
            let dns = host.split_once('/').map(|(_, d)| d).unwrap_or(host);
            if dns == "*" || dns == "~" || dns.strip_prefix("*.").is_some_and(is_dns_name) {
                // Wildcards are valid Istio hosts that /etc/hosts cannot express.
                continue;
            }
            if !is_dns_name(dns) {
                problems.push(format!(
                    "{resource}: spec.egress[{i}].hosts[{j}]: {host:?} is not a valid host \
                     (namespace/dns-name, the name of letters, digits, '-' and '.'); \
                     skipped, the other hosts are written to /etc/hosts"
                ));
                continue;
            }
            let dns = dns.trim_end_matches('.');
            if taken.iter().any(|t| t == dns) {
                continue;
            }
            taken.push(dns.to_string());
            match by_ip.iter_mut().find(|e| e.ip == ip) {
                Some(e) => e.hostnames.push(dns.to_string()),
                None => by_ip.push(HostsEntry {
                    ip: ip.clone(),
                    hostnames: vec![dns.to_string()],
                    resolve: None,
                }),
            }
        }
    }
    (by_ip, problems)
}

/// What is wrong with a Sidecar for the hosts block (see [`egress_hosts`]); empty when
/// nothing. For a store or a check command to report when it loads the resource.
pub fn sidecar_problems(sidecar: &Sidecar) -> Vec<String> {
    egress_hosts(sidecar, &mut Vec::new()).1
}

/// The `hosts` file of the offline render (one `<ip> <names>` line per entry, as istioctl).
/// An entry the agent must resolve becomes a comment saying so: there is no address to write.
pub fn hosts_file(entries: &[HostsEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        match &e.resolve {
            Some(name) => out.push_str(&format!(
                "# {}: the address(es) of {name}, resolved on the VM (onboarding-agent does this)\n",
                e.hostnames.join(" ")
            )),
            None => out.push_str(&format!("{} {}\n", e.ip, e.hostnames.join(" "))),
        }
    }
    out
}
