//! IP filters as the Data Hub writes them: an address, optionally with a prefix length
//! (`/24`) or a dotted netmask (`/255.255.255.0`). Leading zeros are refused because
//! `192.168.01.1` means different things to different parsers (octal vs decimal).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Why an IP filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpFilterError {
    /// Not an address.
    #[error("{0:?} is not an IP address")]
    Address(String),
    /// An octet written with a leading zero.
    #[error("{0:?} has an octet with a leading zero; write e.g. 192.168.1.1, not 192.168.01.1")]
    LeadingZero(String),
    /// Prefix length out of range.
    #[error("{0:?}: prefix length must be 0-32 for IPv4 and 0-128 for IPv6")]
    Prefix(String),
    /// A netmask that is not a valid contiguous mask.
    #[error("{0:?}: the netmask is not a contiguous mask such as 255.255.255.0")]
    Netmask(String),
    /// Too long to be a filter.
    #[error("IP filter is too long (at most 64 characters)")]
    TooLong,
}

/// Parse `ADDR`, `ADDR/PREFIX` or `ADDR/NETMASK`.
pub fn parse(input: &str) -> Result<IpNet, IpFilterError> {
    let s = input.trim();
    if s.len() > 64 {
        return Err(IpFilterError::TooLong);
    }
    let (addr_text, mask_text) = match s.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (s, None),
    };
    let addr = parse_addr(addr_text, s)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match mask_text {
        None => max,
        Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()) => {
            if m.len() > 1 && m.starts_with('0') {
                return Err(IpFilterError::LeadingZero(s.to_owned()));
            }
            match m.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(IpFilterError::Prefix(s.to_owned())),
            }
        }
        Some(m) if addr.is_ipv4() && m.contains('.') => {
            let mask = match parse_addr(m, s)? {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(_) => return Err(IpFilterError::Netmask(s.to_owned())),
            };
            netmask_prefix(mask).ok_or_else(|| IpFilterError::Netmask(s.to_owned()))?
        }
        Some(_) => return Err(IpFilterError::Prefix(s.to_owned())),
    };
    let net = IpNet::new(addr, prefix)
        .map(|n| n.trunc())
        .map_err(|_| IpFilterError::Prefix(s.to_owned()))?;
    Ok(unmapped(net))
}

/// An IPv6 filter inside `::ffff:0:0/96` as the IPv4 network it spells: [`allows`]
/// matches clients by their IPv4 address, which an IPv6 network never contains.
fn unmapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

fn parse_addr(text: &str, whole: &str) -> Result<IpAddr, IpFilterError> {
    if text.contains('.') && !text.contains(':') {
        for octet in text.split('.') {
            if octet.len() > 1 && octet.starts_with('0') {
                return Err(IpFilterError::LeadingZero(whole.to_owned()));
            }
        }
    }
    text.parse::<IpAddr>()
        .map_err(|_| IpFilterError::Address(whole.to_owned()))
}

fn netmask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    // Contiguous: after the ones, only zeros.
    if bits.checked_shl(ones).unwrap_or(0) == 0 {
        u8::try_from(ones).ok()
    } else {
        None
    }
}

/// Whether `ip` lies in any of `nets` (an empty list matches nothing).
pub fn allows_any(nets: &[IpNet], ip: IpAddr) -> bool {
    !nets.is_empty() && allows(nets, ip)
}

/// Whether `ip` is allowed by `filters` (an empty list allows everyone). IPv4-mapped
/// IPv6 addresses are matched as the IPv4 address they carry.
pub fn allows(filters: &[IpNet], ip: IpAddr) -> bool {
    if filters.is_empty() {
        return true;
    }
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    filters.iter().any(|f| f.contains(&ip))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        assert_eq!(parse("192.168.1.1").unwrap().to_string(), "192.168.1.1/32");
        assert_eq!(parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse("10.1.2.3/255.255.0.0").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(parse("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
        assert_eq!(parse("::1").unwrap().to_string(), "::1/128");
    }

    /// Regression (found by the `ip_filter` fuzz target): a filter written as an
    /// IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, `::ffff:10.0.0.0/104`) parsed
    /// as an IPv6 network, while `allows` matches such a client by the IPv4
    /// address it carries: the filter let no one in, not even the address it names.
    #[test]
    fn ipv4_mapped_filters_are_the_ipv4_networks_they_spell() {
        for (text, net) in [
            ("::ffff:1.2.3.4", "1.2.3.4/32"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::FFFF:0:0/96", "0.0.0.0/0"),
        ] {
            let parsed = parse(text).unwrap();
            assert_eq!(parsed.to_string(), net, "{text}");
            assert_eq!(parse(&parsed.to_string()), Ok(parsed), "{text}");
        }
        let filter = [parse("::ffff:1.2.3.4").unwrap()];
        assert!(allows(&filter, "1.2.3.4".parse().unwrap()));
        assert!(allows(&filter, "::ffff:1.2.3.4".parse().unwrap()));
        assert!(!allows(&filter, "1.2.3.5".parse().unwrap()));
        // Networks outside the mapped range stay IPv6 and do not match IPv4 clients.
        assert_eq!(parse("::/0").unwrap().to_string(), "::/0");
        assert!(!allows(
            &[parse("::/0").unwrap()],
            "1.2.3.4".parse().unwrap()
        ));
    }

    #[test]
    fn rejects() {
        assert!(matches!(
            parse("192.168.01.1"),
            Err(IpFilterError::LeadingZero(_))
        ));
        assert!(matches!(
            parse("10.0.0.0/33"),
            Err(IpFilterError::Prefix(_))
        ));
        assert!(matches!(
            parse("10.0.0.0/08"),
            Err(IpFilterError::LeadingZero(_))
        ));
        assert!(matches!(parse("::/129"), Err(IpFilterError::Prefix(_))));
        assert!(matches!(
            parse("10.0.0.0/255.0.255.0"),
            Err(IpFilterError::Netmask(_))
        ));
        assert!(matches!(
            parse("10.0.0.0/255.255.255.256"),
            Err(IpFilterError::Address(_))
        ));
        assert!(parse("example.com").is_err());
        assert!(parse("10.0.0.0/").is_err());
        assert!(parse("10.0.0").is_err());
    }

    #[test]
    fn matching() {
        let f = vec![parse("10.0.0.0/8").unwrap()];
        assert!(allows(&f, "10.2.3.4".parse().unwrap()));
        assert!(allows(&f, "::ffff:10.2.3.4".parse().unwrap()));
        assert!(!allows(&f, "11.0.0.1".parse().unwrap()));
        assert!(allows(&[], "11.0.0.1".parse().unwrap()));
    }

    proptest! {
        #[test]
        fn netmask_and_prefix_agree(a in any::<u32>(), p in 0u8..=32) {
            let addr = Ipv4Addr::from(a);
            let mask = Ipv4Addr::from(if p == 0 { 0 } else { u32::MAX << (32 - p) });
            let by_prefix = parse(&format!("{addr}/{p}")).unwrap();
            let by_mask = parse(&format!("{addr}/{mask}")).unwrap();
            prop_assert_eq!(by_prefix, by_mask);
            prop_assert!(allows(&[by_prefix], IpAddr::V4(addr)));
        }

        #[test]
        fn leading_zero_octets_always_rejected(a in 0u8..=255, b in 0u8..=99, c in 0u8..=255) {
            let s = format!("{a}.0{b}.{c}.1");
            prop_assert!(parse(&s).is_err());
        }

        #[test]
        fn never_panics(s in "[0-9a-f.:/]{0,50}") {
            let _ = parse(&s);
        }
    }
}
