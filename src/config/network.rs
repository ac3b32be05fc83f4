//! `delivery.allow_networks = ["127.0.0.1/32", "10.1.0.0/16"]`: CIDR networks
//! that deliveries may reach even with `delivery.deny_private_networks = true`.
//!
//! Parsed by serde, so a malformed entry is a parse error naming the key, its
//! index and the line. A bare address means that one address (`/32`, `/128`).
//! A network with host bits set (`10.0.0.1/8`) is rejected with the network it
//! probably means: accepting it would silently allow more than what was written.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// One CIDR network of `delivery.allow_networks`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network(IpNet);

impl Network {
    /// Whether `addr` lies in this network. An IPv4 network also matches the
    /// IPv4-mapped IPv6 form of its addresses (`::ffff:127.0.0.1`).
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&addr)
            || match addr {
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| self.0.contains(&IpAddr::V4(v4))),
                IpAddr::V4(_) => false,
            }
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let net = if text.contains('/') {
            IpNet::from_str(text).map_err(|_| {
                format!(
                    "\"{text}\" is not a CIDR network; write an address and a prefix length \
                     like \"10.1.0.0/16\" or \"fd00::/8\""
                )
            })?
        } else {
            let addr = IpAddr::from_str(text).map_err(|_| {
                format!(
                    "\"{text}\" is not an IP address or CIDR network; write e.g. \
                     \"127.0.0.1/32\" or \"10.1.0.0/16\""
                )
            })?;
            IpNet::from(addr)
        };
        if net.trunc() != net {
            return Err(format!(
                "\"{text}\" has host bits set after the prefix; write the network \"{}\" \
                 (or the single address \"{}/{}\")",
                net.trunc(),
                net.addr(),
                net.max_prefix_len()
            ));
        }
        Ok(Network(net))
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_and_single_addresses() {
        let net: Network = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let one: Network = " 127.0.0.1 ".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        let v6: Network = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert_eq!("::1".parse::<Network>().unwrap().to_string(), "::1/128");
    }

    #[test]
    fn an_ipv4_network_matches_the_mapped_form() {
        let net: Network = "127.0.0.1/32".parse().unwrap();
        assert!(net.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!net.contains("::ffff:127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn rejects_malformed_entries_with_a_fix() {
        for (text, expect) in [
            ("10.0.0.0/33", "not a CIDR network"),
            ("localhost", "not an IP address or CIDR network"),
            ("10.0.0/8", "not a CIDR network"),
            ("", "not an IP address"),
            ("10.0.0.1/8", "write the network \"10.0.0.0/8\""),
        ] {
            let err = text.parse::<Network>().unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
