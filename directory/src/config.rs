//! What a directory can be told: plain data, filled in by the command line (`cli`) and read by
//! the server. It lives below everything else and needs no server dependency, so the command
//! line (and the man pages generated from it) builds without the `server` feature.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `smvs-directory` can be told.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    pub listen: SocketAddr,
    /// `sqlite:PATH` or `postgres://…`.
    pub db: String,
    /// `postgres://…` of a streaming read replica of `db` (PostgreSQL only), which look-ups
    /// read: records, the key log's latest epoch and count of changes, and proofs. Writes, and
    /// reads that must see them, stay on `db`. A look-up may show the state from before a
    /// change for as long as the replica lags.
    pub db_replica: Option<String>,
    pub key_file: PathBuf,
    pub limits: LimitConfig,
    pub handshake_timeout: Duration,
    /// Connections served at once; further ones are closed at once.
    pub max_connections: usize,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Take host addresses of a local kind (loopback, link-local, private, shared, see
    /// `smvs_schema::AddressKind`): for a directory that serves one LAN, or a test on
    /// loopback. Off, such a registration or address update is refused (`address-refused`).
    pub allow_private_host_addresses: bool,
    /// Bytes of look-up answers kept in memory (0: none; every look-up then reads the store and
    /// makes its proof).
    pub answer_cache_bytes: usize,
}

/// Limits as configured (flags of `smvs-directory`).
#[derive(Debug, Clone, Copy)]
pub struct LimitConfig {
    /// Requests per second per source address (any kind), with a burst of three seconds' worth.
    pub requests_per_second: u32,
    /// Registrations per hour per source address.
    pub registrations_per_hour: u32,
    /// Authentication attempts (challenges) per minute per account and source address.
    pub auth_per_minute: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            requests_per_second: 50,
            registrations_per_hour: 30,
            auth_per_minute: 10,
        }
    }
}
