//! The host's addresses, as the registration reports them: read from the network
//! interfaces, filtered by the include/exclude regexes of the agent config, and typed VPC
//! (private ranges) or INTERNET (everything else routable).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex_lite::Regex;

use crate::api::registration::{Address, AddressType};

/// One address on one interface, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub interface: String,
    pub ip: IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum HostInfoError {
    #[error("cannot list network interfaces: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid interface regex {pattern:?}: {message}")]
    Regex { pattern: String, message: String },
    #[error(
        "no {wanted:?} address on this host (settings.connectedOver); addresses seen after filtering: [{seen}]"
    )]
    NoAddress { wanted: AddressType, seen: String },
}

/// Interface name filters; an empty include list means all interfaces.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
}

impl Filters {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, HostInfoError> {
        let compile = |p: &String| {
            Regex::new(p).map_err(|e| HostInfoError::Regex {
                pattern: p.clone(),
                message: e.to_string(),
            })
        };
        Ok(Filters {
            include: include.iter().map(compile).collect::<Result<_, _>>()?,
            exclude: exclude.iter().map(compile).collect::<Result<_, _>>()?,
        })
    }

    fn explicitly_included(&self, name: &str) -> bool {
        self.include.iter().any(|r| r.is_match(name))
    }

    fn admits(&self, name: &str) -> bool {
        (self.include.is_empty() || self.explicitly_included(name))
            && !self.exclude.iter().any(|r| r.is_match(name))
    }
}

/// Private (VPC) or public (INTERNET); `None` for addresses a workload is never reached at
/// (unspecified, multicast, link-local, loopback).
pub fn classify(ip: IpAddr) -> Option<AddressType> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressType> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_link_local() {
        return None;
    }
    if ip.is_loopback() {
        return Some(AddressType::Vpc);
    }
    let o = ip.octets();
    // RFC 1918 plus RFC 6598 shared address space (carrier-grade NAT, used by some clouds
    // for their private networks).
    let shared = o[0] == 100 && (64..128).contains(&o[1]);
    if ip.is_private() || shared {
        Some(AddressType::Vpc)
    } else {
        Some(AddressType::Internet)
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressType> {
    let seg0 = ip.segments()[0];
    if ip.is_unspecified() || ip.is_multicast() || (seg0 & 0xffc0) == 0xfe80 {
        return None;
    }
    if ip.is_loopback() {
        return Some(AddressType::Vpc);
    }
    // fc00::/7 unique local addresses are the IPv6 private range.
    if (seg0 & 0xfe00) == 0xfc00 {
        Some(AddressType::Vpc)
    } else {
        Some(AddressType::Internet)
    }
}

/// The addresses to report: filtered by interface name, loopback skipped unless its
/// interface is named by an include regex (single-host demos and tests), classified,
/// de-duplicated, in interface order.
pub fn select(addrs: &[InterfaceAddr], filters: &Filters) -> Vec<Address> {
    let mut out: Vec<Address> = Vec::new();
    for a in addrs {
        if !filters.admits(&a.interface) {
            continue;
        }
        if a.ip.is_loopback() && !filters.explicitly_included(&a.interface) {
            continue;
        }
        let Some(kind) = classify(a.ip) else { continue };
        let ip = a.ip.to_string();
        if !out.iter().any(|o| o.ip == ip) {
            out.push(Address { ip, kind });
        }
    }
    out
}

/// Puts an address of the `connectedOver` type first (the endpoint gives the WorkloadEntry
/// the first address of that type), or fails when there is none.
pub fn for_registration(
    mut addrs: Vec<Address>,
    wanted: AddressType,
) -> Result<Vec<Address>, HostInfoError> {
    match addrs.iter().position(|a| a.kind == wanted) {
        Some(i) => {
            let first = addrs.remove(i);
            addrs.insert(0, first);
            Ok(addrs)
        }
        None => Err(HostInfoError::NoAddress {
            wanted,
            seen: addrs
                .iter()
                .map(|a| format!("{} {:?}", a.ip, a.kind))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Reads the addresses of the interfaces that are up (getifaddrs(3)).
pub fn interface_addrs() -> Result<Vec<InterfaceAddr>, HostInfoError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        if ifa.ifa_flags & (libc::IFF_UP as libc::c_uint) == 0 {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null; its family says which sockaddr type it is.
        let ip = unsafe {
            match (*ifa.ifa_addr).sa_family as libc::c_int {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))))
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        };
        if let Some(ip) = ip {
            out.push(InterfaceAddr {
                interface: name,
                ip,
            });
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ia(interface: &str, ip: &str) -> InterfaceAddr {
        InterfaceAddr {
            interface: interface.into(),
            ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn classification() {
        let cases = [
            ("10.1.2.3", Some(AddressType::Vpc)),
            ("172.16.0.1", Some(AddressType::Vpc)),
            ("172.32.0.1", Some(AddressType::Internet)),
            ("192.168.1.1", Some(AddressType::Vpc)),
            ("100.64.0.1", Some(AddressType::Vpc)),
            ("100.128.0.1", Some(AddressType::Internet)),
            ("8.8.8.8", Some(AddressType::Internet)),
            ("169.254.169.254", None),
            ("0.0.0.0", None),
            ("224.0.0.1", None),
            ("fd00::2", Some(AddressType::Vpc)),
            ("fe80::1", None),
            ("2001:db8::1", Some(AddressType::Internet)),
            ("::ffff:10.0.0.1", Some(AddressType::Vpc)),
            ("ff02::1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(classify(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn filters_and_loopback() {
        let addrs = vec![
            ia("lo", "127.0.0.1"),
            ia("lo", "::1"),
            ia("eth0", "192.0.2.2"),
            ia("eth0", "fe80::1"),
            ia("eth0", "fd00::2"),
            ia("docker0", "172.17.0.1"),
            ia("eth1", "10.0.0.5"),
            ia("eth1", "10.0.0.5"),
        ];
        let all = select(&addrs, &Filters::default());
        let ips: Vec<_> = all.iter().map(|a| a.ip.as_str()).collect();
        assert_eq!(ips, ["192.0.2.2", "fd00::2", "172.17.0.1", "10.0.0.5"]);
        assert_eq!(all[0].kind, AddressType::Internet);

        let f = Filters::new(&["^eth".into()], &["^eth0$".into()]).unwrap();
        let ips: Vec<_> = select(&addrs, &f).into_iter().map(|a| a.ip).collect();
        assert_eq!(ips, ["10.0.0.5"]);

        // Loopback only when an include regex names its interface.
        let f = Filters::new(&["^lo$".into()], &[]).unwrap();
        let ips: Vec<_> = select(&addrs, &f).into_iter().map(|a| a.ip).collect();
        assert_eq!(ips, ["127.0.0.1", "::1"]);

        assert!(Filters::new(&["(".into()], &[]).is_err());
    }

    /// The patterns are regex-lite's dialect: what interface names need works, Unicode
    /// classes are refused with the pattern named (docs/agent.md says so).
    #[test]
    fn interface_patterns_are_regex_lite() {
        let f = Filters::new(&["^(eth|ens)[0-9]+$".into()], &[r"^veth\w*".into()]).unwrap();
        assert!(f.admits("eth0") && f.admits("ens192"));
        assert!(!f.admits("veth1a2b") && !f.admits("docker0"));
        let e = Filters::new(&[r"^\p{L}+$".into()], &[]).unwrap_err();
        assert!(e.to_string().contains(r"\p{L}"), "{e}");
    }

    #[test]
    fn connected_over_picks_the_first_of_its_type() {
        let addrs = select(
            &[ia("eth0", "203.0.113.9"), ia("eth1", "10.0.0.5")],
            &Filters::default(),
        );
        let vpc = for_registration(addrs.clone(), AddressType::Vpc).unwrap();
        assert_eq!(vpc[0].ip, "10.0.0.5");
        assert_eq!(vpc.len(), 2);
        let inet = for_registration(addrs, AddressType::Internet).unwrap();
        assert_eq!(inet[0].ip, "203.0.113.9");

        let only_private = select(&[ia("eth1", "10.0.0.5")], &Filters::default());
        let e = for_registration(only_private, AddressType::Internet).unwrap_err();
        assert!(e.to_string().contains("10.0.0.5"), "{e}");
    }

    #[test]
    fn reads_real_interfaces() {
        // Every Linux host has at least the loopback interface up.
        let addrs = interface_addrs().unwrap();
        assert!(addrs.iter().any(|a| a.ip.is_loopback()), "{addrs:?}");
    }
}
