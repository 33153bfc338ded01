//! The directories this host trusts: one link each, asked together, and what their answers
//! add up to.
//!
//! A look-up asks every configured directory at once (each within [`DIRECTORY_TIMEOUT`]). Each
//! answer is checked under that directory's own key. The answers then count as votes for an
//! identity:
//! - one identity, vouched for by at least the quorum: that is the user's record (the first
//!   configured directory's copy of it, so the default directory's when it answered);
//! - two identities: the directories disagree (an *equivocation*), which is an alarm, never
//!   a choice the host makes by itself (see `judge`);
//! - fewer votes than the quorum: no answer at all, rather than one a single directory could
//!   have made up.
//!
//! Each link shows a throwaway Noise key, never the host's transport key: a look-up names
//! nobody, so no directory can keep a log of which host asked about whom.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use smvs_crypto::{AgreementKeyPair, IdentityBundle};
use smvs_directory::{ClientError, DirectoryClient, LookupAnswer, MovedStatement, VerifiedRecord};
use smvs_schema::{ErrorCode, Username};

use super::log_heads::{HeadBook, HeadSource};
use crate::config::DirectoryAnchor;
use crate::error::HostError;

/// How long a directory call may take before the link is considered dead.
pub const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(15);

/// One directory and the connection to it, made on first use and again after a failure.
pub struct DirectoryLink {
    pub anchor: DirectoryAnchor,
    /// Reach it through this SOCKS5 proxy, as other hosts are reached.
    socks5_proxy: Option<String>,
    client: RefCell<Option<Rc<DirectoryClient>>>,
    /// The key log heads this directory showed (or contacts passed on) since the last check.
    pub heads: RefCell<HeadBook>,
}

impl DirectoryLink {
    pub fn new(anchor: DirectoryAnchor, socks5_proxy: Option<String>) -> DirectoryLink {
        DirectoryLink {
            anchor,
            socks5_proxy,
            client: RefCell::new(None),
            heads: RefCell::new(HeadBook::default()),
        }
    }

    pub fn name(&self) -> &str {
        &self.anchor.name
    }

    /// The connection, made now if there is none.
    pub async fn client(&self) -> Result<Rc<DirectoryClient>, HostError> {
        if let Some(d) = self.client.borrow().as_ref() {
            return Ok(d.clone());
        }
        let address = &self.anchor.address;
        let throwaway = AgreementKeyPair::generate().map_err(HostError::internal)?;
        let key = self.anchor.key;
        let proxy = self.socks5_proxy.clone();
        let connecting = async move {
            match proxy {
                None => DirectoryClient::connect(address, key, &throwaway).await,
                Some(proxy) => {
                    let tcp = smvs_transport::socks5_tcp(&proxy, address)
                        .await
                        .map_err(|why| {
                            ClientError::Local(format!(
                                "SOCKS5 proxy {proxy} cannot reach the directory at {address}: {why}"
                            ))
                        })?;
                    DirectoryClient::connect_over(tcp, address, key, &throwaway).await
                }
            }
        };
        let client = tokio::time::timeout(DIRECTORY_TIMEOUT, connecting)
            .await
            .map_err(|_| self.no_answer("connecting"))?
            .map_err(|e| {
                if matches!(e, ClientError::Transport(smvs_transport::TransportError::KeyMismatch { .. })) {
                    smvs_service::security_event!(error, smvs_service::logging::DIRECTORY_KEY_MISMATCH, directory = %address, "directory key mismatch: the directory is not the one pinned in the config");
                }
                HostError::new(ErrorCode::Directory, format!("cannot reach the directory {} at {address}: {e}", self.anchor.name))
            })?;
        let client = Rc::new(client);
        *self.client.borrow_mut() = Some(client.clone());
        Ok(client)
    }

    /// After an error from this link: a broken link (not a refusal) is made anew next time.
    pub fn failed(&self, e: &ClientError) {
        if e.code().is_none() {
            self.drop_link();
        }
    }

    /// Forgets the connection (it stopped answering).
    pub fn drop_link(&self) {
        *self.client.borrow_mut() = None;
    }

    /// The error for a call that got no answer in time (the link is dropped).
    pub fn no_answer(&self, doing: &str) -> HostError {
        self.drop_link();
        HostError::new(
            ErrorCode::Directory,
            format!(
                "{doing}: the directory {} at {} did not answer within {} s",
                self.anchor.name,
                self.anchor.address,
                DIRECTORY_TIMEOUT.as_secs()
            ),
        )
    }

    /// Notes the log head a record was proven against, to compare at the next check.
    pub fn saw(&self, record: &VerifiedRecord) {
        if let Some(at) = &record.logged_at {
            self.heads
                .borrow_mut()
                .saw(at.head.clone(), HeadSource::Lookup);
        }
    }

    /// This directory's signed record for `peer`, or its statement of where `peer` moved.
    pub async fn lookup(&self, peer: &Username) -> Result<LookupAnswer, HostError> {
        let client = self.client().await?;
        // A link that silently died would otherwise hold the caller until TCP gives up.
        match tokio::time::timeout(DIRECTORY_TIMEOUT, client.lookup_answer(peer)).await {
            Err(_) => Err(self.no_answer(&format!("looking up {peer}"))),
            Ok(Ok(answer)) => {
                if let LookupAnswer::Record(record) = &answer {
                    self.saw(record);
                }
                Ok(answer)
            }
            Ok(Err(e)) => {
                self.failed(&e);
                let mut error = HostError::from(e);
                if error.code == ErrorCode::Directory {
                    error.message =
                        format!("the directory {}: {}", self.anchor.name, error.message);
                }
                Err(error)
            }
        }
    }
}

/// One directory's checked answer.
#[derive(Debug)]
pub struct Answer {
    /// The directory's name (`default` for the one of `directory`).
    pub directory: String,
    pub record: Rc<VerifiedRecord>,
}

/// What the directories said about one user: every checked answer, in the configured order.
#[derive(Debug)]
pub struct Answers {
    pub user: Username,
    pub answers: Vec<Answer>,
    /// How many must agree.
    pub quorum: usize,
    /// How many directories were asked.
    pub asked: usize,
    /// Why the others gave none (one line each, with the directory's name).
    pub failures: Vec<String>,
    /// Directories that answered that the user moved away, with the user's statement.
    pub moved: Vec<(String, MovedStatement)>,
}

impl Answers {
    /// The one answer of the one directory asked (a scoped one, or one a contact moved to):
    /// nothing to agree with.
    pub fn only(user: &Username, directory: &str, record: VerifiedRecord) -> Answers {
        Answers {
            user: user.clone(),
            answers: vec![Answer {
                directory: directory.to_owned(),
                record: Rc::new(record),
            }],
            quorum: 1,
            asked: 1,
            failures: Vec::new(),
            moved: Vec::new(),
        }
    }

    /// The answers grouped by the identity they show, largest group first (the earlier
    /// configured directory first among equals), each group in the configured order.
    pub fn groups(&self) -> Vec<Vec<&Answer>> {
        let mut groups: Vec<Vec<&Answer>> = Vec::new();
        for answer in &self.answers {
            let identity = &answer.record.user.identity;
            match groups
                .iter_mut()
                .find(|g| &g[0].record.user.identity == identity)
            {
                Some(group) => group.push(answer),
                None => groups.push(vec![answer]),
            }
        }
        // Stable: among equals the group that came first stays first.
        groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
        groups
    }

    /// The user's record, when the directories that answered agree on the identity and there
    /// are at least the quorum of them. Otherwise an error that says which failed.
    pub fn agreed(&self) -> Result<&Rc<VerifiedRecord>, HostError> {
        let groups = self.groups();
        if groups.len() > 1 {
            return Err(equivocation(&self.user, &describe(&groups)));
        }
        match groups.first() {
            Some(group) if group.len() >= self.quorum => Ok(&group[0].record),
            _ => Err(self.too_few(groups.first().map_or(0, Vec::len))),
        }
    }

    /// The error for fewer agreeing answers than the quorum.
    pub fn too_few(&self, agreeing: usize) -> HostError {
        let mut message = format!(
            "only {agreeing} of the {} directories vouched for {}, and {} must",
            self.asked, self.user, self.quorum
        );
        for failure in &self.failures {
            message.push_str("; ");
            message.push_str(failure);
        }
        HostError::new(ErrorCode::Directory, message)
    }

    /// Whether an answer shows `identity` with `key` as the user's transport key.
    pub fn vouches(
        &self,
        identity: &IdentityBundle,
        key: &smvs_crypto::AgreementPublicKey,
    ) -> bool {
        self.answers
            .iter()
            .any(|a| &a.record.user.identity == identity && &a.record.user.transport_key == key)
    }

    /// Whether any answer names `key` as the user's transport key (an arriving link's key is
    /// checked against this before anything is pinned).
    pub fn names_transport_key(&self, key: &smvs_crypto::AgreementPublicKey) -> bool {
        self.answers
            .iter()
            .any(|a| &a.record.user.transport_key == key)
    }
}

/// "default, b: key 1a2b…; c: key 9f8e…": which directories showed which identity.
pub fn describe(groups: &[Vec<&Answer>]) -> String {
    groups
        .iter()
        .map(|group| {
            let names: Vec<&str> = group.iter().map(|a| a.directory.as_str()).collect();
            format!(
                "{} show{} key {}",
                names.join(", "),
                if names.len() == 1 { "s" } else { "" },
                short_key(&group[0].record.user.identity)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The first 16 hex digits of an identity's signing key: enough to tell keys apart in a
/// message (safety numbers are for comparing them).
pub fn short_key(identity: &IdentityBundle) -> String {
    identity.signing_key.to_hex()[..16].to_owned()
}

/// The error for directories that disagree about `peer`.
pub fn equivocation(peer: &Username, how: &str) -> HostError {
    HostError::new(
        ErrorCode::DirectoriesDisagree,
        format!(
            "the directories disagree about {peer}'s identity key ({how}); nothing is sent to \
             {peer} until you decide: compare safety numbers with `smvsctl verify {peer}`, then \
             `--accept-new-key` or `--keep-key`"
        ),
    )
}

/// Asks every directory of `links` about `peer` at once. An error only when none vouched for
/// anyone: `unknown-user` when every directory that answered said it has no such user,
/// otherwise the first failure.
pub async fn lookup_all(
    links: &[Rc<DirectoryLink>],
    quorum: usize,
    peer: &Username,
) -> Result<Answers, HostError> {
    let results = futures::future::join_all(links.iter().map(|link| link.lookup(peer))).await;
    let mut answers = Vec::new();
    let mut moved = Vec::new();
    let mut failures = Vec::new();
    let mut unknown = None;
    let mut unknowns = 0;
    let mut first_error = None;
    for (link, result) in links.iter().zip(results) {
        match result {
            Ok(LookupAnswer::Record(record)) => answers.push(Answer {
                directory: link.anchor.name.clone(),
                record: Rc::new(record),
            }),
            Ok(LookupAnswer::Moved(statement)) => {
                failures.push(format!(
                    "{}: {peer} moved to the directory at {}",
                    link.anchor.name, statement.to_address
                ));
                moved.push((link.anchor.name.clone(), statement));
            }
            Err(e) => {
                failures.push(format!("{}: {}", link.anchor.name, e.message));
                if e.code == ErrorCode::UnknownUser {
                    unknowns += 1;
                    unknown.get_or_insert(e);
                } else {
                    tracing::debug!(directory = %link.anchor.name, error = %e, "a directory gave no answer");
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    // (Directories that say the user moved away are an answer too: whoever pinned the user
    // may follow them.)
    if answers.is_empty() && moved.is_empty() {
        // "No such user" only when as many directories as it takes to vouch say so: one
        // alone must not make a user unknown (queued messages to them fail for good).
        return Err(match (unknown, first_error) {
            (Some(unknown), _) if unknowns >= quorum => unknown,
            (_, Some(e)) => e,
            (Some(unknown), None) => HostError::new(ErrorCode::Directory, format!(
                "only {unknowns} of the {} directories answered, saying they have no user {peer}, and {quorum} must: {}",
                links.len(), unknown.message
            )),
            (None, None) => HostError::new(ErrorCode::Directory, "no directory is configured"),
        });
    }
    Ok(Answers {
        user: peer.clone(),
        answers,
        quorum,
        asked: links.len(),
        failures,
        moved,
    })
}
