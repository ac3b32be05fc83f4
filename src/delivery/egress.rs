//! Egress policy: which addresses deliveries may connect to
//! (`delivery.deny_private_networks`, `delivery.allow_networks`).
//!
//! A webhook URL is an instruction to make a request from inside the network
//! walhook runs in. Where the people who write subscription URLs must not reach
//! that network (server-side request forgery: a cloud metadata endpoint at
//! 169.254.169.254, an admin API on 127.0.0.1, a database on 10.0.0.5), turn on
//! `deny_private_networks`. Then:
//!
//! - Every address a host name resolves to is checked **after resolution, at
//!   connect time** ([`GuardedResolver`], installed as the client's resolver),
//!   so a name that resolves to a public address at config load and to
//!   127.0.0.1 later (DNS rebinding) is still refused. Blocked addresses are
//!   never connected to; if no address is left, the attempt fails with
//!   [`BlockedAddress`].
//! - URLs whose host is an IP literal never reach a resolver (reqwest connects
//!   to them directly), so [`EgressPolicy::check_url`] checks them before each
//!   attempt: the endpoint URL and an OAuth2 `token_url`.
//! - Proxy environment variables (`HTTP_PROXY`, ...) are ignored while the guard
//!   is on: through a proxy, the address finally connected to is chosen by the
//!   proxy and could not be checked here.
//! - `allow_networks` (CIDRs) take precedence over the deny list, e.g.
//!   `["10.20.0.0/16"]` for the one internal network webhooks may reach.
//!
//! Blocked is not transient: the policy dead-letters the event at once with
//! the reason (retrying cannot help until the config changes). The deny list
//! is [`non_public`]; IPv4-mapped, IPv4-compatible and NAT64 IPv6 forms are
//! judged by the IPv4 address they carry.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::{DeliveryConfig, Network};

/// Which destinations deliveries may connect to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    deny_private: bool,
    allow: Vec<Network>,
}

/// An attempt refused by the egress policy; not transient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedAddress {
    /// The host name that resolved to `addr`, when it was not an IP literal.
    pub host: Option<String>,
    /// The refused address.
    pub addr: IpAddr,
    /// Why it is not public ("loopback", "private", ...).
    pub kind: &'static str,
}

impl fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let article = if self.kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        match &self.host {
            Some(host) => write!(
                f,
                "blocked: {host} resolves to {}, {article} {} address",
                self.addr, self.kind
            )?,
            None => write!(
                f,
                "blocked: {} is {article} {} address",
                self.addr, self.kind
            )?,
        }
        f.write_str("; allow it in delivery.allow_networks")
    }
}

impl StdError for BlockedAddress {}

impl EgressPolicy {
    /// The policy `[delivery]` configures.
    pub fn from_config(config: &DeliveryConfig) -> Self {
        EgressPolicy {
            deny_private: config.deny_private_networks,
            allow: config.allow_networks.clone(),
        }
    }

    /// Whether anything is ever refused.
    pub fn is_active(&self) -> bool {
        self.deny_private
    }

    /// Checks one address: allowed when the guard is off, when an
    /// `allow_networks` entry contains it, or when it is public.
    pub fn check(&self, addr: IpAddr) -> Result<(), BlockedAddress> {
        if !self.deny_private || self.allow.iter().any(|net| net.contains(addr)) {
            return Ok(());
        }
        match non_public(addr) {
            Some(kind) => Err(BlockedAddress {
                host: None,
                addr,
                kind,
            }),
            None => Ok(()),
        }
    }

    /// Checks a URL whose host is an IP literal (such hosts bypass the
    /// resolver); host names are checked by [`GuardedResolver`] when resolved.
    pub fn check_url(&self, url: &url::Url) -> Result<(), BlockedAddress> {
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check(IpAddr::V6(v6)),
            Some(url::Host::Domain(_)) | None => Ok(()),
        }
    }

    /// Keeps the allowed addresses of `host`'s resolution; an error when none is left
    /// (naming the first refused one).
    fn filter(
        &self,
        host: &str,
        addrs: impl Iterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, BlockedAddress> {
        let mut first_blocked = None;
        let allowed: Vec<SocketAddr> = addrs
            .filter(|addr| match self.check(addr.ip()) {
                Ok(()) => true,
                Err(blocked) => {
                    tracing::debug!(host, addr = %addr.ip(), kind = blocked.kind, "egress: skipping a non-public address");
                    first_blocked.get_or_insert(blocked);
                    false
                }
            })
            .collect();
        match first_blocked {
            Some(blocked) if allowed.is_empty() => Err(BlockedAddress {
                host: Some(host.to_owned()),
                ..blocked
            }),
            _ => Ok(allowed),
        }
    }
}

/// The refusal somewhere in `err`'s source chain (reqwest and hyper wrap the
/// resolver's error in theirs).
pub(crate) fn blocked_in<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a BlockedAddress> {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(err) = cause {
        if let Some(blocked) = err.downcast_ref::<BlockedAddress>() {
            return Some(blocked);
        }
        cause = err.source();
    }
    None
}

/// Why `addr` is not a public unicast address, or `None` if it is one.
///
/// IPv4: 0.0.0.0/8 (unspecified, "this network"), 10.0.0.0/8, 172.16.0.0/12
/// and 192.168.0.0/16 (RFC 1918), 100.64.0.0/10 (CGNAT, RFC 6598),
/// 127.0.0.0/8, 169.254.0.0/16 (link-local, cloud metadata), 224.0.0.0/4
/// (multicast) and 240.0.0.0/4 (reserved, broadcast).
/// IPv6: `::`, `::1`, fc00::/7 (unique local), fe80::/10 (link-local),
/// fec0::/10 (deprecated site-local), ff00::/8 (multicast), and the IPv4
/// address inside ::ffff:0:0/96 (mapped), ::/96 (compatible) and
/// 64:ff9b::/96 (NAT64).
pub fn non_public(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = v4.octets();
    Some(match (a, b) {
        (0, _) => "unspecified",
        (10, _) | (172, 16..=31) | (192, 168) => "private",
        (100, 64..=127) => "shared (CGNAT)",
        (127, _) => "loopback",
        (169, 254) => "link-local",
        (224..=239, _) => "multicast",
        (240..=255, _) => "reserved",
        _ => return None,
    })
}

fn non_public_v6(v6: Ipv6Addr) -> Option<&'static str> {
    if v6.is_unspecified() {
        return Some("unspecified");
    }
    if v6.is_loopback() {
        return Some("loopback");
    }
    let segments = v6.segments();
    if let Some(v4) = embedded_v4(v6) {
        return non_public_v4(v4);
    }
    Some(match segments[0] {
        0xfc00..=0xfdff => "unique-local",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`, deprecated but still routed by some stacks)
/// and the NAT64 well-known prefix (`64:ff9b::a.b.c.d`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new(
        (s[6] >> 8) as u8,
        (s[6] & 0xff) as u8,
        (s[7] >> 8) as u8,
        (s[7] & 0xff) as u8,
    );
    match s {
        [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        _ => None,
    }
}

/// A resolver that hands reqwest only the addresses the policy allows.
pub(crate) struct GuardedResolver {
    policy: Arc<EgressPolicy>,
    inner: Arc<dyn Resolve>,
}

impl GuardedResolver {
    /// Guards the system resolver (getaddrinfo on tokio's blocking pool).
    pub(crate) fn system(policy: Arc<EgressPolicy>) -> Self {
        Self::new(policy, Arc::new(SystemResolver))
    }

    /// Guards `inner` (tests inject a scripted resolver).
    pub(crate) fn new(policy: Arc<EgressPolicy>, inner: Arc<dyn Resolve>) -> Self {
        GuardedResolver { policy, inner }
    }
}

impl fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedResolver")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let policy = self.policy.clone();
        let resolving = self.inner.resolve(name);
        Box::pin(async move {
            let addrs = resolving.await?;
            let allowed = policy.filter(&host, addrs)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// getaddrinfo through tokio, like reqwest's default resolver.
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in afterwards.
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(Box::new(addrs.collect::<Vec<_>>().into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::VecDeque;
    use std::str::FromStr;
    use std::sync::Mutex;

    use super::*;

    fn policy(deny: bool, allow: &[&str]) -> EgressPolicy {
        EgressPolicy {
            deny_private: deny,
            allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_listed_range_is_refused_and_public_addresses_pass() {
        let guard = policy(true, &[]);
        for (addr, kind) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.254", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.254", "shared (CGNAT)"),
            ("127.0.0.1", "loopback"),
            ("127.1.2.3", "loopback"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b::10.1.2.3", "private"),
        ] {
            let err = guard.check(ip(addr)).unwrap_err();
            assert_eq!(err.kind, kind, "{addr}");
            assert_eq!(err.addr, ip(addr));
        }
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "192.169.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(guard.check(ip(addr)), Ok(()), "{addr} is public");
        }
    }

    #[test]
    fn off_by_default_and_allowlist_takes_precedence() {
        let off = EgressPolicy::from_config(&DeliveryConfig::default());
        assert!(!off.is_active());
        assert_eq!(off.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(off.check(ip("169.254.169.254")), Ok(()));

        let guard = policy(true, &["127.0.0.1/32", "10.20.0.0/16", "fd00::/8"]);
        assert_eq!(guard.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(guard.check(ip("::ffff:127.0.0.1")), Ok(()), "mapped form");
        assert!(guard.check(ip("127.0.0.2")).is_err());
        assert!(guard.check(ip("::1")).is_err(), "::1 is not 127.0.0.1");
        assert_eq!(guard.check(ip("10.20.3.4")), Ok(()));
        assert!(guard.check(ip("10.21.0.1")).is_err());
        assert_eq!(guard.check(ip("fd00::5")), Ok(()));
        assert!(guard.check(ip("169.254.169.254")).is_err());
    }

    #[test]
    fn ip_literal_urls_are_checked_and_names_left_to_the_resolver() {
        let guard = policy(true, &[]);
        let check = |u: &str| guard.check_url(&url::Url::parse(u).unwrap());
        assert_eq!(
            check("http://169.254.169.254/latest/meta-data")
                .unwrap_err()
                .kind,
            "link-local"
        );
        assert_eq!(check("http://10.0.0.1/").unwrap_err().kind, "private");
        assert_eq!(check("http://[::1]:8080/").unwrap_err().kind, "loopback");
        assert_eq!(
            check("http://[::ffff:7f00:1]/").unwrap_err().kind,
            "loopback"
        );
        // The URL parser normalises other IPv4 spellings to the address.
        assert_eq!(
            check("http://2130706433/").unwrap_err().addr,
            ip("127.0.0.1")
        );
        assert_eq!(check("http://0x7f.1/").unwrap_err().addr, ip("127.0.0.1"));
        assert_eq!(check("http://localhost/"), Ok(()), "resolved later");
        assert_eq!(check("https://example.com/"), Ok(()));
    }

    #[test]
    fn the_message_names_the_address_and_the_fix() {
        let err = policy(true, &[]).check(ip("10.0.0.1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "blocked: 10.0.0.1 is a private address; allow it in delivery.allow_networks"
        );
        let err = BlockedAddress {
            host: Some("localhost".into()),
            addr: ip("::"),
            kind: "unspecified",
        };
        assert_eq!(
            err.to_string(),
            "blocked: localhost resolves to ::, an unspecified address; \
             allow it in delivery.allow_networks"
        );
    }

    /// Answers each resolution with the next scripted list of addresses.
    struct Scripted(Mutex<VecDeque<Vec<IpAddr>>>);

    impl Resolve for Scripted {
        fn resolve(&self, _name: Name) -> Resolving {
            let next = self.0.lock().unwrap().pop_front().unwrap_or_default();
            Box::pin(async move {
                let addrs: Vec<SocketAddr> =
                    next.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
                Ok(Box::new(addrs.into_iter()) as Addrs)
            })
        }
    }

    fn guarded(policy: EgressPolicy, script: Vec<Vec<&str>>) -> GuardedResolver {
        let script = script
            .into_iter()
            .map(|list| list.into_iter().map(ip).collect())
            .collect();
        GuardedResolver::new(Arc::new(policy), Arc::new(Scripted(Mutex::new(script))))
    }

    async fn resolve(resolver: &GuardedResolver, host: &str) -> Result<Vec<IpAddr>, String> {
        match resolver.resolve(Name::from_str(host).unwrap()).await {
            Ok(addrs) => Ok(addrs.map(|a| a.ip()).collect()),
            Err(err) => Err(match err.downcast_ref::<BlockedAddress>() {
                Some(blocked) => blocked.to_string(),
                None => format!("not a BlockedAddress: {err}"),
            }),
        }
    }

    #[tokio::test]
    async fn rebinding_is_caught_at_the_second_resolution() {
        let resolver = guarded(
            policy(true, &[]),
            vec![vec!["93.184.215.14"], vec!["127.0.0.1"]],
        );
        assert_eq!(
            resolve(&resolver, "rebind.example").await,
            Ok(vec![ip("93.184.215.14")])
        );
        let err = resolve(&resolver, "rebind.example").await.unwrap_err();
        assert!(
            err.starts_with("blocked: rebind.example resolves to 127.0.0.1, a loopback address"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn only_allowed_addresses_of_a_mixed_answer_are_kept() {
        let resolver = guarded(
            policy(true, &[]),
            vec![
                vec!["10.0.0.7", "93.184.215.14", "::1", "2606:4700::1"],
                vec!["169.254.169.254", "fd00::1"],
                vec![],
            ],
        );
        assert_eq!(
            resolve(&resolver, "mixed.example").await,
            Ok(vec![ip("93.184.215.14"), ip("2606:4700::1")])
        );
        let err = resolve(&resolver, "metadata.example").await.unwrap_err();
        assert!(
            err.contains("169.254.169.254, a link-local address"),
            "{err}"
        );
        // Nothing resolved is not our refusal; the connector reports it.
        assert_eq!(resolve(&resolver, "empty.example").await, Ok(vec![]));
    }

    #[tokio::test]
    async fn the_allowlist_applies_to_resolved_addresses() {
        let resolver = guarded(
            policy(true, &["127.0.0.1/32"]),
            vec![vec!["127.0.0.1"], vec!["::1"]],
        );
        assert_eq!(
            resolve(&resolver, "localhost").await,
            Ok(vec![ip("127.0.0.1")])
        );
        assert!(resolve(&resolver, "localhost").await.is_err());
    }

    /// A minimal HTTP server on `ip:port` (port 0: any) answering 204 and
    /// counting connections.
    async fn counting_server(ip: &str, port: u16) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        (port, hits)
    }

    #[tokio::test]
    async fn a_rebinding_name_is_refused_by_a_real_client_when_it_turns_private() {
        use std::sync::atomic::Ordering::SeqCst;
        // 127.0.0.2 stands in for the public address (it is allowlisted);
        // the name then rebinds to 127.0.0.1, which must never be reached.
        let (port, public_hits) = counting_server("127.0.0.2", 0).await;
        let (_, private_hits) = counting_server("127.0.0.1", port).await;
        let resolver = guarded(
            policy(true, &["127.0.0.2/32"]),
            vec![
                vec!["127.0.0.2"],
                vec!["127.0.0.1"],
                vec!["127.0.0.1", "127.0.0.2"],
            ],
        );
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .dns_resolver(Arc::new(resolver))
            .build()
            .unwrap();
        let url = format!("http://rebind.test:{port}/hook");
        let first = client.post(&url).body("1").send().await.unwrap();
        assert_eq!(first.status().as_u16(), 204);
        assert_eq!(public_hits.load(SeqCst), 1);

        let err = client.post(&url).body("2").send().await.unwrap_err();
        let blocked = blocked_in(&err).unwrap_or_else(|| panic!("not a refusal: {err:?}"));
        assert_eq!(blocked.addr, ip("127.0.0.1"));
        assert_eq!(blocked.host.as_deref(), Some("rebind.test"));

        // A mixed answer connects only to the allowed address.
        let third = client.post(&url).body("3").send().await.unwrap();
        assert_eq!(third.status().as_u16(), 204);
        assert_eq!(public_hits.load(SeqCst), 2);
        assert_eq!(
            private_hits.load(SeqCst),
            0,
            "the private address was reached"
        );
    }

    #[test]
    fn the_refusal_is_found_inside_wrapping_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Box<dyn StdError + Send + Sync>);
        let blocked = policy(true, &[]).check(ip("10.0.0.1")).unwrap_err();
        let outer = Outer(Box::new(blocked.clone()));
        assert_eq!(blocked_in(&outer), Some(&blocked));
        let plain = Outer("no".into());
        assert_eq!(blocked_in(&plain), None);
    }
}
