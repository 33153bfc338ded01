//! Validated names. Parse, don't validate: once a `Username` exists it is well-formed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("username must be 3 to 32 characters of a-z, 0-9, '.', '_' or '-', or an identity address smvs:… (got {0:?})")]
    Username(String),
    #[error("a name at another directory is NAME@DIRECTORY, DIRECTORY being 1 to 32 characters of a-z, 0-9 and '-' (got {0:?})")]
    Scope(String),
    #[error("host address must be HOST:PORT with a port from 1 to 65535 (got {0:?})")]
    HostAddress(String),
}

/// A user's name: 3–32 characters of `[a-z0-9._-]`, given by a directory; or an identity
/// address, `smvs:` and 56 characters of `[a-z2-7]` (the identity key and a checksum, see
/// `smvs_crypto::identity_address`), which names a user found in the DHT and no directory
/// hands out. The only thing SMVS ever asks about a user.
///
/// Locally (never on the wire) a name may carry a scope: `alice@work` is the user `alice` at
/// the directory this host calls `work`, one outside the set asked for plain names (see
/// [`Username::parse_local`]). Whatever is sent or signed names the user as their directory
/// does, without the scope: [`Username::wire_str`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 32;

    pub fn parse(text: &str) -> Result<Self, NameError> {
        if Self::looks_like_identity_address(text) {
            return Ok(Username(text.to_owned()));
        }
        let ok_len = (Self::MIN_LEN..=Self::MAX_LEN).contains(&text.len());
        let ok_chars = text.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
        if ok_len && ok_chars {
            Ok(Username(text.to_owned()))
        } else {
            // Keep the echo short: a hostile client may send a megabyte of "name".
            let shown: String = text.chars().take(40).collect();
            Err(NameError::Username(shown))
        }
    }

    /// A name as a person or this host's own records write it: [`Username::parse`]'s, or
    /// `NAME@DIRECTORY` for a name at one of this host's scoped directories (a directory's
    /// local name: 1 to 32 of `[a-z0-9-]`). Never for what a peer or a directory sends.
    pub fn parse_local(text: &str) -> Result<Self, NameError> {
        let Some((name, scope)) = text.split_once('@') else {
            return Username::parse(text);
        };
        let name = Username::parse(name)?;
        let scope_ok = !scope.is_empty()
            && scope.len() <= 32
            && scope
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if name.is_identity_address() || !scope_ok {
            return Err(NameError::Scope(text.chars().take(80).collect()));
        }
        Ok(Username(text.to_owned()))
    }

    /// `name` at the scoped directory `scope` (a name [`Username::parse_local`] takes).
    pub fn scoped(name: &Username, scope: &str) -> Result<Self, NameError> {
        Username::parse_local(&format!("{}@{scope}", name.wire_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as the user's directory has it, which is what goes on the wire and into
    /// everything signed or hashed: `alice` for `alice@work`.
    pub fn wire_str(&self) -> &str {
        self.0.split_once('@').map_or(&self.0, |(name, _)| name)
    }

    /// [`Username::wire_str`] as a name.
    pub fn wire(&self) -> Username {
        Username(self.wire_str().to_owned())
    }

    /// The directory a scoped name is at (`work` for `alice@work`); None for a plain name.
    pub fn scope(&self) -> Option<&str> {
        self.0.split_once('@').map(|(_, scope)| scope)
    }

    /// Whether this is an identity address (`smvs:…`) rather than a directory's name. Its
    /// checksum and key are checked where it is resolved (`smvs_crypto::parse_identity_address`).
    pub fn is_identity_address(&self) -> bool {
        Self::looks_like_identity_address(&self.0)
    }

    fn looks_like_identity_address(text: &str) -> bool {
        text.strip_prefix(IDENTITY_ADDRESS_PREFIX)
            .is_some_and(|body| {
                body.len() == IDENTITY_ADDRESS_BODY
                    && body
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
            })
    }
}

/// What an identity address begins with, and how many characters follow.
const IDENTITY_ADDRESS_PREFIX: &str = "smvs:";
const IDENTITY_ADDRESS_BODY: usize = 56;

/// What a person types: a scoped name too ([`Username::parse_local`]).
impl FromStr for Username {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Username::parse_local(s)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({})", self.0)
    }
}

/// Where a user's host can be reached: `HOST:PORT`, where HOST is a DNS name (including a
/// proxy's or an onion name), an IPv4 address or a bracketed IPv6 address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HostAddress(String);

impl HostAddress {
    pub const MAX_LEN: usize = 262;

    pub fn parse(text: &str) -> Result<Self, NameError> {
        let err = || NameError::HostAddress(text.chars().take(64).collect());
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(err());
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(err)?;
        let port: u16 = port.parse().map_err(|_| err())?;
        if port == 0 {
            return Err(err());
        }
        let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        {
            inner.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                })
        };
        if host_ok {
            Ok(HostAddress(text.to_owned()))
        } else {
            Err(err())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl HostAddress {
    /// The host part as an IP address, when it is written as one (`192.0.2.1:7421`,
    /// `[2001:db8::1]:7421`); `None` for a name, which only resolving can turn into addresses.
    /// An IPv4 address written as IPv6 (`[::ffff:10.0.0.1]`) is the IPv4 address it is.
    pub fn ip(&self) -> Option<IpAddr> {
        let (host, _) = self.0.rsplit_once(':')?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
    }

    /// The kind of network the address is on: [`AddressKind::of`] its IP, loopback for
    /// `localhost` and names under `.localhost` (which always resolve to loopback, RFC 6761),
    /// or `None` for any other name, whose addresses only resolving can tell.
    pub fn kind(&self) -> Option<AddressKind> {
        if let Some(ip) = self.ip() {
            return Some(AddressKind::of(ip));
        }
        let (host, _) = self.0.rsplit_once(':')?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        (host == "localhost" || host.ends_with(".localhost")).then_some(AddressKind::Loopback)
    }
}

/// What kind of network an IP address belongs to, for the one rule about where a peer may
/// send us: a host address or a call's media address of a local kind (loopback, link-local,
/// private, shared) is only followed by someone on that same kind of network. A stranger who
/// publishes `127.0.0.1:22` as their host, or offers media at `192.168.1.1`, would otherwise
/// make a host or a device on the internet send to a service on its own machine or LAN.
///
/// IPv4 and IPv6 share a kind where they mean the same (`127.0.0.1` and `::1` are both
/// loopback; RFC 1918 and unique-local `fc00::/7` are both private).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKind {
    /// Anything not below: reachable across the internet, as far as an address can say.
    /// (Documentation ranges such as `192.0.2.0/24` count as public: they are not local.)
    Public,
    /// `127.0.0.0/8`, `::1`: this machine.
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`: this link only.
    LinkLocal,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`), unique-local `fc00::/7` and the
    /// deprecated site-local `fec0::/10`: a private network.
    Private,
    /// `100.64.0.0/10` (RFC 6598): a carrier-grade NAT's shared space, or an overlay network.
    Shared,
    /// Never a place to send to: unspecified (`0.0.0.0`, `::`, which reach this machine),
    /// `0.0.0.0/8`, multicast, broadcast, and the reserved `240.0.0.0/4`.
    Unusable,
}

impl AddressKind {
    /// The kind of `ip`. IPv6 that carries an IPv4 address a gateway may turn back into
    /// `a.b.c.d` is judged as that IPv4 address: mapped (`::ffff:a.b.c.d`), compatible
    /// (`::a.b.c.d`), SIIT (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d` and the local-use
    /// `64:ff9b:1::/48`) and 6to4 (`2002:AABB:CCDD::`).
    pub fn of(ip: IpAddr) -> AddressKind {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                let o = v6.octets();
                let low_v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
                let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1];
                let compatible =
                    s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified();
                let siit = s[..6] == [0, 0, 0, 0, 0xffff, 0];
                if nat64 || compatible || siit {
                    return Self::of_v4(low_v4);
                }
                if s[0] == 0x2002 {
                    return Self::of_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
                }
                if v6.is_unspecified() || v6.is_multicast() {
                    AddressKind::Unusable
                } else if v6.is_loopback() {
                    AddressKind::Loopback
                } else if s[0] & 0xffc0 == 0xfe80 {
                    AddressKind::LinkLocal
                } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
                    AddressKind::Private
                } else {
                    AddressKind::Public
                }
            }
        }
    }

    fn of_v4(v4: Ipv4Addr) -> AddressKind {
        let [a, b, ..] = v4.octets();
        let c = v4.octets()[2];
        // 192.0.0.0/24: IETF protocol assignments; nothing a host lives on.
        if a == 0
            || v4.is_multicast()
            || v4.is_broadcast()
            || a >= 240
            || (a == 192 && b == 0 && c == 0)
        {
            AddressKind::Unusable
        } else if v4.is_loopback() {
            AddressKind::Loopback
        } else if v4.is_link_local() {
            AddressKind::LinkLocal
        } else if v4.is_private() || (a == 198 && (b == 18 || b == 19)) {
            // 198.18.0.0/15 is for benchmarking networks: as local as a private one.
            AddressKind::Private
        } else if a == 100 && (64..128).contains(&b) {
            AddressKind::Shared
        } else {
            AddressKind::Public
        }
    }

    /// The rule: whether someone whose own address is of kind `self` may send to an address of
    /// kind `theirs`. Public addresses may always be reached, unusable ones never, and a local
    /// kind only from that same kind.
    pub fn may_reach(self, theirs: AddressKind) -> bool {
        match theirs {
            AddressKind::Public => true,
            AddressKind::Unusable => false,
            local => self == local,
        }
    }

    /// How the kind reads in an error message ("a loopback address").
    pub fn describe(self) -> &'static str {
        match self {
            AddressKind::Public => "a public address",
            AddressKind::Loopback => "a loopback address (this machine)",
            AddressKind::LinkLocal => "a link-local address",
            AddressKind::Private => "a private-network address",
            AddressKind::Shared => "a shared (carrier-grade NAT) address",
            AddressKind::Unusable => {
                "an address nothing can be sent to (unspecified, multicast, broadcast or reserved)"
            }
        }
    }
}

impl FromStr for HostAddress {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostAddress::parse(s)
    }
}

impl fmt::Display for HostAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostAddress({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_names() {
        let scoped = Username::parse_local("alice@work-2").unwrap();
        assert_eq!(scoped.wire_str(), "alice");
        assert_eq!(scoped.wire(), Username::parse("alice").unwrap());
        assert_eq!(scoped.scope(), Some("work-2"));
        let plain = Username::parse_local("alice").unwrap();
        assert_eq!((plain.wire_str(), plain.scope()), ("alice", None));
        assert_eq!(
            Username::scoped(&scoped, "home").unwrap().as_str(),
            "alice@home"
        );
        // Never from the wire.
        assert!(Username::parse("alice@work").is_err());
        for bad in [
            "alice@",
            "@work",
            "al@work",
            "alice@Work",
            "alice@w.k",
            "alice@a@b",
        ] {
            assert!(Username::parse_local(bad).is_err(), "{bad:?}");
        }
        assert!(Username::parse_local(&format!("alice@{}", "w".repeat(33))).is_err());
    }

    #[test]
    fn usernames() {
        for good in ["bob", "alice.smith", "a_b-c.9", &"x".repeat(32)] {
            assert!(Username::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Alice",
            "al ice",
            "alice@example",
            "ålice",
            &"x".repeat(33),
            "bob\n",
            "smvs:abc",
            &format!("smvs:{}", "a".repeat(55)),
            &format!("smvs:{}", "a".repeat(57)),
            &format!("smvs:{}1", "a".repeat(55)),
            &format!("SMVS:{}", "a".repeat(56)),
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
        let address = Username::parse(&format!("smvs:{}27", "a".repeat(54))).unwrap();
        assert!(address.is_identity_address());
        assert!(Username::parse_local(&format!("{address}@work")).is_err());
        assert!(!Username::parse("bob").unwrap().is_identity_address());
    }

    #[test]
    fn host_addresses() {
        for good in [
            "127.0.0.1:7421",
            "host.example:1",
            "[::1]:7421",
            "abcdefghijklmnop.onion:7421",
        ] {
            assert!(HostAddress::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "host",
            "host:0",
            "host:70000",
            ":7421",
            "a..b:1",
            "[zz]:1",
            "bad host:1",
            "-a:1",
        ] {
            assert!(HostAddress::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn address_kinds() {
        use AddressKind::*;
        for (ip, kind) in [
            ("192.0.2.7", Public),
            ("203.0.113.9", Public),
            ("8.8.8.8", Public),
            ("2001:db8::1", Public),
            ("127.0.0.1", Loopback),
            ("127.3.4.5", Loopback),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("fd00::1", Private),
            ("fc00::1", Private),
            ("64:ff9b::10.0.0.1", Private),
            ("::ffff:192.168.0.1", Private),
            ("100.64.0.1", Shared),
            ("100.127.255.255", Shared),
            ("100.128.0.1", Public),
            ("172.32.0.1", Public),
            ("0.0.0.0", Unusable),
            ("0.1.2.3", Unusable),
            ("::", Unusable),
            ("224.0.0.1", Unusable),
            ("ff02::1", Unusable),
            ("255.255.255.255", Unusable),
            ("240.0.0.1", Unusable),
            // IPv6 forms that carry an IPv4 address a gateway turns back into it.
            ("::127.0.0.1", Loopback),
            ("::ffff:0:10.0.0.1", Private),
            ("64:ff9b:1::10.0.0.1", Private),
            ("2002:7f00:1::1", Loopback),
            ("2002:0a00:0001::", Private),
            ("2002:0808:0808::1", Public),
            ("192.0.0.8", Unusable),
            ("198.18.0.1", Private),
            ("198.19.255.1", Private),
            ("198.20.0.1", Public),
        ] {
            assert_eq!(AddressKind::of(ip.parse().unwrap()), kind, "{ip}");
        }
    }

    #[test]
    fn local_kinds_are_reached_only_from_the_same_kind() {
        use AddressKind::*;
        let all = [Public, Loopback, LinkLocal, Private, Shared, Unusable];
        for ours in all {
            assert!(ours.may_reach(Public), "{ours:?}");
            assert!(!ours.may_reach(Unusable), "{ours:?}");
            for theirs in [Loopback, LinkLocal, Private, Shared] {
                assert_eq!(
                    ours.may_reach(theirs),
                    ours == theirs,
                    "{ours:?} {theirs:?}"
                );
            }
        }
        let host = |s: &str| HostAddress::parse(s).unwrap();
        assert_eq!(host("127.0.0.2:7421").kind(), Some(Loopback));
        assert_eq!(host("[fd00::5]:7421").kind(), Some(Private));
        assert_eq!(host("[::ffff:10.0.0.1]:1").kind(), Some(Private));
        assert_eq!(host("localhost:7421").kind(), Some(Loopback));
        assert_eq!(host("a.LOCALHOST:7421").kind(), Some(Loopback));
        assert_eq!(host("example.org:7421").kind(), None);
        assert_eq!(host("abcdefghijklmnop.onion:7421").kind(), None);
    }
}
