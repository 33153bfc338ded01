//! Validated names. Parse, don't validate: once a `Username` exists it is well-formed.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("username must be 3 to 32 characters of a-z, 0-9, '.', '_' or '-' (got {0:?})")]
    Username(String),
    #[error("host address must be HOST:PORT with a port from 1 to 65535 (got {0:?})")]
    HostAddress(String),
}

/// A user's name: 3–32 characters of `[a-z0-9._-]`. The only thing SMVS ever asks about a user.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 32;

    pub fn parse(text: &str) -> Result<Self, NameError> {
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

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Username {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Username::parse(s)
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
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
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
}
