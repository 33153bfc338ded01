//! Where a hosted host lives: its name, users, units, directories and sockets. Everything
//! else derives its paths from here.

use std::fmt;
use std::path::PathBuf;

/// The state of every hosted host; 0711 root, so that local users cannot list the names.
pub const STATE_ROOT: &str = "/var/lib/smvs-hosts";
/// The sockets of every hosted host; 0711 root.
pub const RUNTIME_ROOT: &str = "/run/smvs-hosts";
/// Each hosted host's smvsd config, `NAME.toml`.
pub const CONFIG_DIR: &str = "/etc/smvs/hosts";

/// A hosted host's name: 3 to 20 of `a-z`, `0-9` and `-`, starting with a letter and not
/// ending with `-`. Short enough that `smvskg-NAME` is a valid system user name (at most 32
/// characters) and plain enough to need no escaping in unit names or paths.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 20;

    pub fn parse(text: &str) -> anyhow::Result<HostName> {
        let ok_len = (Self::MIN_LEN..=Self::MAX_LEN).contains(&text.len());
        let ok_chars = text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_ends = text.starts_with(|c: char| c.is_ascii_lowercase()) && !text.ends_with('-');
        if ok_len && ok_chars && ok_ends {
            Ok(HostName(text.to_owned()))
        } else {
            let shown: String = text.chars().take(40).collect();
            anyhow::bail!(
                "'{shown}' is not a hosted host's name: 3 to 20 of a-z, 0-9 and '-', starting with a letter and not ending with '-'"
            )
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The user smvsd runs as (and its group).
    pub fn host_user(&self) -> String {
        format!("smvsd-{}", self.0)
    }

    /// The user the key guard runs as (and its group, of which the host user is a member).
    pub fn keyguard_user(&self) -> String {
        format!("smvskg-{}", self.0)
    }

    pub fn host_unit(&self) -> String {
        format!("smvsd@{}.service", self.0)
    }

    pub fn keyguard_unit(&self) -> String {
        format!("smvs-keyguard@{}.service", self.0)
    }

    /// `/var/lib/smvs-hosts/NAME`: root's, 0711.
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(STATE_ROOT).join(&self.0)
    }

    /// The host's database and transport key (smvsd@NAME's StateDirectory).
    pub fn host_state_dir(&self) -> PathBuf {
        self.state_dir().join("host")
    }

    /// The identity's secret keys (smvs-keyguard@NAME's StateDirectory).
    pub fn keyguard_state_dir(&self) -> PathBuf {
        self.state_dir().join("keyguard")
    }

    /// `/run/smvs-hosts/NAME`.
    pub fn runtime_dir(&self) -> PathBuf {
        PathBuf::from(RUNTIME_ROOT).join(&self.0)
    }

    /// The host's local socket: root only.
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir().join("host").join("smvsd.sock")
    }

    pub fn config_file(&self) -> PathBuf {
        PathBuf::from(CONFIG_DIR).join(format!("{}.toml", self.0))
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["alice", "u01", "a-b-c", "abcdefghijklmnopqrst"] {
            assert!(HostName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Alice",
            "1abc",
            "abc-",
            "a_b",
            "a.b",
            "../x",
            "abcdefghijklmnopqrstu",
            "ä-bc",
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad}");
        }
        let n = HostName::parse("abcdefghijklmnopqrst").expect("name");
        assert!(n.keyguard_user().len() <= 32);
        assert_eq!(n.host_unit(), "smvsd@abcdefghijklmnopqrst.service");
    }
}
