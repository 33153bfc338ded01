//! A real `smvs-directory` process, and users whose keys the test holds in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use smvs_crypto::{AgreementKeyPair, IdentityKeys, SigningPublicKey};
use smvs_directory::{DirectoryClient, DirectorySession, Registration};
use smvs_schema::{HostAddress, Username};
use tempfile::TempDir;

use crate::daemon::{binary, Daemon};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A directory process with its own temporary state.
pub struct DirectoryProcess {
    pub daemon: Daemon,
    pub addr: SocketAddr,
    pub key: SigningPublicKey,
    pub db: String,
    pub dir: TempDir,
    pub key_file: PathBuf,
}

impl DirectoryProcess {
    /// Starts a directory on 127.0.0.1 with an OS-chosen port and a fresh database.
    pub async fn start(backend: Backend, extra: &[&str]) -> anyhow::Result<DirectoryProcess> {
        let dir = tempfile::Builder::new().prefix("smvs-dir-").tempdir()?;
        let db = match backend {
            Backend::Sqlite => format!("sqlite:{}", dir.path().join("directory.db").display()),
            Backend::Postgres => crate::postgres::fresh_database().await?,
        };
        Self::start_with(dir, db, extra)
    }

    /// [`DirectoryProcess::start`] with SQLite, for callers outside any runtime.
    pub fn start_sqlite_blocking() -> anyhow::Result<DirectoryProcess> {
        Self::start_sqlite_blocking_with(&[])
    }

    /// [`DirectoryProcess::start_sqlite_blocking`] with more flags.
    pub fn start_sqlite_blocking_with(extra: &[&str]) -> anyhow::Result<DirectoryProcess> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(Self::start(Backend::Sqlite, extra))
    }

    /// Starts a directory on an existing database and key (a second process behind one
    /// PostgreSQL, or a restart). Like every directory the harness starts, it takes loopback
    /// host addresses (`--allow-private-host-addresses`): the tests' hosts live on 127.x.
    pub fn start_with(
        dir: TempDir,
        db: String,
        extra: &[&str],
    ) -> anyhow::Result<DirectoryProcess> {
        Self::launch(dir, db, "127.0.0.1", Vec::new(), extra, true)
    }

    /// A directory as an operator starts it by default, which refuses host addresses of a
    /// local kind (loopback, private, …), on SQLite.
    pub async fn start_public_only(extra: &[&str]) -> anyhow::Result<DirectoryProcess> {
        let dir = tempfile::Builder::new().prefix("smvs-dir-").tempdir()?;
        let db = format!("sqlite:{}", dir.path().join("directory.db").display());
        Self::launch(dir, db, "127.0.0.1", Vec::new(), extra, false)
    }

    /// A directory with SQLite inside `site`'s network namespace, on its (private) address.
    pub fn start_in(site: &crate::netns::Site, extra: &[&str]) -> anyhow::Result<DirectoryProcess> {
        let dir = tempfile::Builder::new().prefix("smvs-dir-").tempdir()?;
        let db = format!("sqlite:{}", dir.path().join("directory.db").display());
        Self::launch(dir, db, site.ip, site.exec_prefix(), extra, true)
    }

    fn launch(
        dir: TempDir,
        db: String,
        ip: &str,
        netns_exec: Vec<String>,
        extra: &[&str],
        allow_private_host_addresses: bool,
    ) -> anyhow::Result<DirectoryProcess> {
        let key_file = dir.path().join("directory.key");
        let mut args: Vec<String> = netns_exec;
        let program = if args.is_empty() {
            binary("smvs-directory")?
        } else {
            // `ip netns exec NAME smvs-directory …`
            args.push(binary("smvs-directory")?.display().to_string());
            PathBuf::from("ip")
        };
        args.extend([
            "--listen".into(),
            format!("{ip}:0"),
            "--db".into(),
            db.clone(),
            "--key-file".into(),
            key_file.display().to_string(),
        ]);
        if allow_private_host_addresses {
            args.push("--allow-private-host-addresses".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.path().join(format!(
            "directory-{}.log",
            smvs_crypto::random_array::<3>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ));
        let daemon = Daemon::start("smvs-directory", &program, &args, &log, &[])?;
        let addr: SocketAddr = daemon
            .status
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("unexpected status {:?}", daemon.status))?
            .parse()?;
        let key = pubkey(&key_file)?;
        Ok(DirectoryProcess {
            daemon,
            addr,
            key,
            db,
            dir,
            key_file,
        })
    }

    /// This directory's store, opened as the directory opens it (the key deregistered names
    /// are kept under comes from the key file).
    pub async fn store(&self) -> anyhow::Result<smvs_directory::store::Store> {
        let keys = smvs_directory::load_keys(&self.key_file)?;
        Ok(smvs_directory::store::Store::open(&self.db, keys.names).await?)
    }

    /// A client with a fresh transport key, pinned to this directory.
    pub async fn client(&self) -> anyhow::Result<DirectoryClient> {
        let transport = AgreementKeyPair::generate()?;
        Ok(DirectoryClient::connect(&self.addr.to_string(), self.key, &transport).await?)
    }
}

/// `smvs-directory pubkey --key-file PATH`, as an operator would run it.
pub fn pubkey(key_file: &std::path::Path) -> anyhow::Result<SigningPublicKey> {
    let out = Command::new(binary("smvs-directory")?)
        .args(["pubkey", "--key-file"])
        .arg(key_file)
        .output()?;
    if !out.status.success() {
        bail!("pubkey failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(SigningPublicKey::from_hex(
        String::from_utf8(out.stdout)?.trim(),
    )?)
}

/// A user whose identity keys live in the test process (smvs-keyguard holds them in the
/// product).
pub struct TestUser {
    pub username: Username,
    pub identity: IdentityKeys,
    pub transport: AgreementKeyPair,
    pub host: HostAddress,
}

impl TestUser {
    pub fn new(name: &str, host: &str) -> anyhow::Result<TestUser> {
        Ok(TestUser {
            username: Username::parse(name)?,
            identity: IdentityKeys::generate()?,
            transport: AgreementKeyPair::generate()?,
            host: HostAddress::parse(host)?,
        })
    }

    pub fn registration(&self, directory_key: &SigningPublicKey) -> Registration {
        Registration::sign_locally(
            directory_key,
            self.username.clone(),
            &self.identity,
            self.transport.public(),
            self.host.clone(),
            smvs_directory::clock::now_ms(),
        )
    }

    /// Challenge, open the sealed token with our identity key, authenticate.
    pub async fn login(&self, client: &DirectoryClient) -> anyhow::Result<DirectorySession> {
        client
            .login(&self.username, |sealed| {
                self.identity.agreement.open_sealed(sealed)
            })
            .await
            .context("login")
    }
}
