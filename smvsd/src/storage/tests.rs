//! The storage actor on a real SQLite file in a temporary directory: duplicates and tombstones,
//! the hash chain's verdicts, crypto-shredding on delete (checked in the raw bytes of the
//! database and its WAL), expiry, the outbox, and held message requests.
//!
//! Everything comes in through `super::*` (the storage module's own imports), so these tests
//! need no path into the rest of the crate.

use super::*;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Wall-clock milliseconds, the clock `stored_at` and tombstones are stamped with.
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

/// A fresh database under a fresh storage key. Keep the `TempDir`: dropping it deletes the
/// files.
fn open() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::TempDir::new().unwrap();
    let storage = Storage::open(&dir.path().join("host.db"), AeadKey::generate()).unwrap();
    (dir, storage)
}

/// Runs a test body on the kind of runtime smvsd's actors use (one thread).
fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

/// A message `from` wrote to `to`, as it arrives (`prev`: the sender's previous message, for
/// the hash chain; empty for the first).
fn incoming(from: &str, to: &str, time: i64, text: &str, prev: &[u8]) -> StoredMessage {
    StoredMessage {
        id: MessageId::random(),
        peer: name(from),
        from: name(from),
        to: name(to),
        time,
        payload: Payload::Text(text.into()),
        prev_hash: prev.to_vec(),
        status: Status::Received,
        reason: FailReason::None,
        integrity: Integrity::Unchecked,
        direction: Direction::In,
    }
}

/// The chain hash of `m`, which its successor names as `prev_hash`.
fn hash(m: &StoredMessage) -> Vec<u8> {
    message_hash(&m.id, &m.from, &m.to, m.time, &m.prev_hash, &m.payload)
        .unwrap()
        .to_vec()
}

async fn arrive(storage: &Storage, m: &StoredMessage) -> Arrival {
    storage
        .store_incoming(m.clone(), None, || {})
        .await
        .unwrap()
}

fn texts(history: &[StoredMessage]) -> Vec<String> {
    history
        .iter()
        .map(|m| match &m.payload {
            Payload::Text(t) => t.clone(),
            other => panic!("not a text: {other:?}"),
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The raw bytes of the database file and its WAL (absent: empty).
fn on_disk(dir: &tempfile::TempDir) -> Vec<u8> {
    let mut bytes = std::fs::read(dir.path().join("host.db")).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("host.db-wal")) {
        bytes.extend_from_slice(&wal);
    }
    bytes
}

/// One column of one table, read past the storage actor (a second, read-only connection).
fn raw_column(dir: &tempfile::TempDir, sql: &str) -> Vec<Vec<u8>> {
    let c = Connection::open_with_flags(
        dir.path().join("host.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = c.prepare(sql).unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    rows
}

#[test]
fn the_same_incoming_id_is_stored_once() {
    run(async {
        let (_dir, s) = open();
        let m = incoming("bob", "alice", 1, "hello", &[]);
        assert_eq!(arrive(&s, &m).await, Arrival::Stored(Integrity::Unchecked));
        assert_eq!(arrive(&s, &m).await, Arrival::Duplicate);
        // The same id with other content (a replay with a changed body) is a duplicate too.
        let replay = StoredMessage {
            payload: Payload::Text("changed".into()),
            ..m.clone()
        };
        assert_eq!(arrive(&s, &replay).await, Arrival::Duplicate);
        let history = s.history(&name("bob"), 0).await.unwrap();
        assert_eq!(texts(&history), ["hello"]);
        // Ids are per conversation: carol may use the same id.
        let from_carol = StoredMessage {
            peer: name("carol"),
            from: name("carol"),
            ..m
        };
        assert_eq!(
            arrive(&s, &from_carol).await,
            Arrival::Stored(Integrity::Unchecked)
        );
    });
}

#[test]
fn a_deleted_message_sent_again_is_a_duplicate_until_its_tombstone_is_pruned() {
    run(async {
        let (_dir, s) = open();
        let bob = name("bob");
        let deleted_by_us = incoming("bob", "alice", 1, "one", &[]);
        let deleted_by_bob = incoming("bob", "alice", 2, "two", &hash(&deleted_by_us));
        arrive(&s, &deleted_by_us).await;
        arrive(&s, &deleted_by_bob).await;

        assert_eq!(
            s.delete(&bob, Some(deleted_by_us.id), None).await.unwrap(),
            1
        );
        assert_eq!(
            s.delete_from_peer(&bob, vec![deleted_by_bob.id])
                .await
                .unwrap(),
            [deleted_by_bob.id]
        );
        assert!(s.history(&bob, 0).await.unwrap().is_empty());

        // The sender never saw our receipt and sends both again: not back from the dead.
        assert_eq!(arrive(&s, &deleted_by_us).await, Arrival::Duplicate);
        assert_eq!(arrive(&s, &deleted_by_bob).await, Arrival::Duplicate);
        assert!(s.history(&bob, 0).await.unwrap().is_empty());

        // Tombstones are kept for 7 days (pruned by `expire`)...
        let now = now_ms();
        s.expire(now + 6 * DAY_MS).await.unwrap();
        assert_eq!(arrive(&s, &deleted_by_us).await, Arrival::Duplicate);
        // ...and no longer: after that the id is new again.
        s.expire(now + 8 * DAY_MS).await.unwrap();
        assert!(matches!(
            arrive(&s, &deleted_by_us).await,
            Arrival::Stored(_)
        ));
        assert_eq!(texts(&s.history(&bob, 0).await.unwrap()), ["one"]);
    });
}

#[test]
fn the_hash_chain_says_ok_gap_and_out_of_order() {
    run(async {
        let (_dir, s) = open();
        let m1 = incoming("bob", "alice", 1, "m1", &[]);
        let m2 = incoming("bob", "alice", 2, "m2", &hash(&m1));
        let m3 = incoming("bob", "alice", 3, "m3", &hash(&m2));
        let m4 = incoming("bob", "alice", 4, "m4", &hash(&m3));
        let m5 = incoming("bob", "alice", 5, "m5", &hash(&m4));

        // The first message has nothing to chain to.
        assert_eq!(arrive(&s, &m1).await, Arrival::Stored(Integrity::Unchecked));
        assert_eq!(arrive(&s, &m2).await, Arrival::Stored(Integrity::Ok));
        // m3 is missing: m4 names a message we never saw.
        assert_eq!(arrive(&s, &m4).await, Arrival::Stored(Integrity::Gap));
        // The gap moved the head: m5 follows m4.
        assert_eq!(arrive(&s, &m5).await, Arrival::Stored(Integrity::Ok));
        // m3 comes late: its predecessor is known, and it must not pull the head back.
        assert_eq!(
            arrive(&s, &m3).await,
            Arrival::Stored(Integrity::OutOfOrder)
        );
        let m6 = incoming("bob", "alice", 6, "m6", &hash(&m5));
        assert_eq!(arrive(&s, &m6).await, Arrival::Stored(Integrity::Ok));

        let history = s.history(&name("bob"), 0).await.unwrap();
        let verdicts: Vec<(String, Integrity)> = history
            .iter()
            .map(|m| (texts(std::slice::from_ref(m))[0].clone(), m.integrity))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("m1".to_string(), Integrity::Unchecked),
                ("m2".to_string(), Integrity::Ok),
                ("m4".to_string(), Integrity::Gap),
                ("m5".to_string(), Integrity::Ok),
                ("m3".to_string(), Integrity::OutOfOrder),
                ("m6".to_string(), Integrity::Ok),
            ]
        );
    });
}

#[test]
fn a_message_whose_successor_came_first_is_out_of_order_not_a_gap() {
    run(async {
        let (_dir, s) = open();
        let m1 = incoming("bob", "alice", 1, "m1", &[]);
        let m2 = incoming("bob", "alice", 2, "m2", &hash(&m1));
        let m3 = incoming("bob", "alice", 3, "m3", &hash(&m2));
        let m4 = incoming("bob", "alice", 4, "m4", &hash(&m3));
        arrive(&s, &m1).await;
        // m2 and m3 are both late; m4 is a gap.
        assert_eq!(arrive(&s, &m4).await, Arrival::Stored(Integrity::Gap));
        // m3's own predecessor is unknown, but m4 names m3: late, not a new gap.
        assert_eq!(
            arrive(&s, &m3).await,
            Arrival::Stored(Integrity::OutOfOrder)
        );
        assert_eq!(
            arrive(&s, &m2).await,
            Arrival::Stored(Integrity::OutOfOrder)
        );
    });
}

#[test]
fn deleting_a_conversation_destroys_its_key_and_leaves_nothing_on_disk() {
    run(async {
        let (dir, s) = open();
        let (alice, bob) = (name("alice"), name("bob"));
        const MARKER: &str = "MARKER-quetzalcoatl-7731";
        let m1 = incoming("bob", "alice", 1, &format!("{MARKER} from bob"), &[]);
        arrive(&s, &m1).await;
        let sent = s
            .queue_outgoing(&alice, &bob, Payload::Text(format!("{MARKER} to bob")))
            .await
            .unwrap();
        s.set_outgoing_status(&bob, vec![sent.id], Status::Delivered)
            .await
            .unwrap();
        // Another conversation, which must survive.
        let from_carol = incoming("carol", "alice", 1, "carol stays", &[]);
        arrive(&s, &from_carol).await;

        // What would betray the conversation if it stayed: the sealed rows and the wrapped
        // key. Check first that they are on disk now, so finding nothing later means
        // something.
        let sealed = raw_column(&dir, "SELECT sealed FROM messages");
        let wrapped = raw_column(&dir, "SELECT wrapped_key FROM conversations");
        assert_eq!(sealed.len(), 3);
        assert_eq!(wrapped.len(), 2);
        let before = on_disk(&dir);
        for secret in sealed.iter().chain(&wrapped) {
            assert!(contains(&before, secret), "not on disk before the delete");
        }
        assert!(
            !contains(&before, MARKER.as_bytes()),
            "a body is stored in clear"
        );

        assert_eq!(s.delete(&bob, None, None).await.unwrap(), 2);

        // Nothing of the conversation can be read through the API...
        assert!(s.history(&bob, 0).await.unwrap().is_empty());
        assert_eq!(s.message(&bob, m1.id).await.unwrap(), None);
        assert_eq!(s.message(&bob, sent.id).await.unwrap(), None);
        assert!(s.outbox(&bob, 0, 100).await.unwrap().is_empty());
        let listed: Vec<Username> = s
            .conversations()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.peer)
            .collect();
        assert_eq!(listed, [name("carol")]);
        assert_eq!(
            texts(&s.history(&name("carol"), 0).await.unwrap()),
            ["carol stays"]
        );

        // ...and none of its bytes is left in the database file or the WAL.
        let after = on_disk(&dir);
        assert!(!contains(&after, MARKER.as_bytes()));
        let carol_rows = raw_column(&dir, "SELECT sealed FROM messages");
        assert_eq!(carol_rows.len(), 1);
        for secret in sealed.iter().filter(|s| !carol_rows.contains(s)) {
            assert!(
                !contains(&after, secret),
                "a deleted sealed row is still on disk"
            );
        }
        let wrapped_now = raw_column(&dir, "SELECT wrapped_key FROM conversations");
        let destroyed: Vec<&Vec<u8>> = wrapped
            .iter()
            .filter(|w| !wrapped_now.contains(w))
            .collect();
        assert_eq!(destroyed.len(), 1, "exactly bob's key is replaced");
        assert!(
            !contains(&after, destroyed[0]),
            "the old wrapped key is still on disk"
        );

        // The conversation goes on under its new key, and the deleted message stays a
        // duplicate.
        assert_eq!(arrive(&s, &m1).await, Arrival::Duplicate);
        let again = incoming("bob", "alice", 2, "after the delete", &hash(&m1));
        assert!(matches!(arrive(&s, &again).await, Arrival::Stored(_)));
        assert_eq!(
            texts(&s.history(&bob, 0).await.unwrap()),
            ["after the delete"]
        );
    });
}

#[test]
fn expire_removes_what_is_older_than_the_conversations_expiry() {
    run(async {
        let (_dir, s) = open();
        let (alice, bob, carol) = (name("alice"), name("bob"), name("carol"));
        s.set_expiry(&bob, 60).await.unwrap();
        let m = incoming("bob", "alice", 1, "disappears", &[]);
        arrive(&s, &m).await;
        let delivered = s
            .queue_outgoing(&alice, &bob, Payload::Text("delivered, disappears".into()))
            .await
            .unwrap();
        s.set_outgoing_status(&bob, vec![delivered.id], Status::Delivered)
            .await
            .unwrap();
        let queued = s
            .queue_outgoing(&alice, &bob, Payload::Text("still to send".into()))
            .await
            .unwrap();
        arrive(&s, &incoming("carol", "alice", 1, "no expiry here", &[])).await;

        let now = now_ms();
        // Younger than 60 s: nothing goes.
        assert!(s.expire(now).await.unwrap().is_empty());
        assert_eq!(s.history(&bob, 0).await.unwrap().len(), 3);

        // Past 60 s: bob's received and delivered messages go; what is still in the outbox
        // stays (we accepted to send it); carol's conversation has no expiry.
        // Each one that went is named, for the devices to hear of it.
        let mut gone = s.expire(now + 61_000).await.unwrap();
        gone.sort_by_key(|(_, id)| *id);
        let mut expected = vec![(bob.clone(), m.id), (bob.clone(), delivered.id)];
        expected.sort_by_key(|(_, id)| *id);
        assert_eq!(gone, expected);
        let left = s.history(&bob, 0).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, queued.id);
        assert_eq!(
            texts(&s.history(&carol, 0).await.unwrap()),
            ["no expiry here"]
        );
        // An expired message sent again is a duplicate (it left a tombstone).
        assert_eq!(arrive(&s, &m).await, Arrival::Duplicate);

        // Once delivered, it expires too.
        s.set_outgoing_status(&bob, vec![queued.id], Status::Delivered)
            .await
            .unwrap();
        assert_eq!(
            s.expire(now + 61_000).await.unwrap(),
            vec![(bob.clone(), queued.id)]
        );
        assert!(s.history(&bob, 0).await.unwrap().is_empty());
    });
}

#[test]
fn the_outbox_keeps_order_and_follows_statuses() {
    run(async {
        let (_dir, s) = open();
        let (alice, bob) = (name("alice"), name("bob"));
        let mut ids = Vec::new();
        for text in ["first", "second", "third"] {
            let m = s
                .queue_outgoing(&alice, &bob, Payload::Text(text.into()))
                .await
                .unwrap();
            assert_eq!(m.status, Status::Queued);
            ids.push(m.id);
        }
        // Each outgoing message chains to the one before.
        let history = s.history(&bob, 0).await.unwrap();
        assert!(history[0].prev_hash.is_empty());
        assert_eq!(history[1].prev_hash, hash(&history[0]));
        assert_eq!(history[2].prev_hash, hash(&history[1]));

        let outbox = s.outbox(&bob, 0, 100).await.unwrap();
        assert_eq!(
            outbox.iter().map(|(_, m)| m.id).collect::<Vec<_>>(),
            ids,
            "oldest first"
        );
        assert!(outbox.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(s.queued_count().await.unwrap(), 3);
        assert_eq!(
            s.peers_with_outbox().await.unwrap(),
            std::slice::from_ref(&bob)
        );
        // Paging: after the first position, the other two; a limit is a limit.
        let rest = s.outbox(&bob, outbox[0].0, 100).await.unwrap();
        assert_eq!(rest.iter().map(|(_, m)| m.id).collect::<Vec<_>>(), ids[1..]);
        assert_eq!(s.outbox(&bob, 0, 1).await.unwrap().len(), 1);

        // Sent stays in the outbox (no receipt yet); setting it twice changes nothing.
        assert_eq!(
            s.set_outgoing_status(&bob, vec![ids[0]], Status::Sent)
                .await
                .unwrap(),
            [ids[0]]
        );
        assert!(s
            .set_outgoing_status(&bob, vec![ids[0]], Status::Sent)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.outbox(&bob, 0, 100).await.unwrap()[0].1.status,
            Status::Sent
        );
        assert_eq!(s.queued_count().await.unwrap(), 3);

        // Delivered and failed leave the outbox; delivered is final.
        s.set_outgoing_status(&bob, vec![ids[0]], Status::Delivered)
            .await
            .unwrap();
        s.set_outgoing_status(&bob, vec![ids[1]], Status::Failed)
            .await
            .unwrap();
        assert!(s
            .set_outgoing_status(&bob, vec![ids[0]], Status::Sent)
            .await
            .unwrap()
            .is_empty());
        let outbox = s.outbox(&bob, 0, 100).await.unwrap();
        assert_eq!(
            outbox.iter().map(|(_, m)| m.id).collect::<Vec<_>>(),
            [ids[2]]
        );
        assert_eq!(s.queued_count().await.unwrap(), 1);
        let statuses: Vec<Status> = s
            .history(&bob, 0)
            .await
            .unwrap()
            .iter()
            .map(|m| m.status)
            .collect();
        assert_eq!(
            statuses,
            [Status::Delivered, Status::Failed, Status::Queued]
        );

        // The status of someone else's message cannot be set through ours.
        let theirs = incoming("bob", "alice", 1, "hi", &[]);
        arrive(&s, &theirs).await;
        assert!(s
            .set_outgoing_status(&bob, vec![theirs.id], Status::Delivered)
            .await
            .unwrap()
            .is_empty());

        s.set_outgoing_status(&bob, vec![ids[2]], Status::Delivered)
            .await
            .unwrap();
        assert!(s.peers_with_outbox().await.unwrap().is_empty());
        assert_eq!(s.queued_count().await.unwrap(), 0);
    });
}

#[test]
fn held_messages_are_released_as_received() {
    run(async {
        let (_dir, s) = open();
        let stranger = name("stranger");
        let first = StoredMessage {
            status: Status::Held,
            ..incoming("stranger", "alice", 1, "may I?", &[])
        };
        let second = StoredMessage {
            status: Status::Held,
            ..incoming("stranger", "alice", 2, "please", &hash(&first))
        };
        arrive(&s, &first).await;
        arrive(&s, &second).await;
        // Someone else's held message is not released with the stranger's.
        let other = StoredMessage {
            status: Status::Held,
            ..incoming("other", "alice", 1, "me too", &[])
        };
        arrive(&s, &other).await;
        assert!(s
            .history(&stranger, 0)
            .await
            .unwrap()
            .iter()
            .all(|m| m.status == Status::Held));

        let mut released = s.release_held(&stranger).await.unwrap();
        released.sort();
        let mut expected = vec![first.id, second.id];
        expected.sort();
        assert_eq!(released, expected);
        assert!(s
            .history(&stranger, 0)
            .await
            .unwrap()
            .iter()
            .all(|m| m.status == Status::Received));
        // Released once: a second release finds nothing.
        assert!(s.release_held(&stranger).await.unwrap().is_empty());
        assert_eq!(
            s.history(&name("other"), 0).await.unwrap()[0].status,
            Status::Held
        );
    });
}

#[test]
fn failed_messages_keep_their_reason_and_unknown_stored_values_are_errors() {
    run(async {
        let dir = tempfile::TempDir::new().unwrap();
        let key = || AeadKey::from_bytes(&[7; 32]).unwrap();
        let storage = Storage::open(&dir.path().join("host.db"), key()).unwrap();
        let (alice, bob) = (name("alice"), name("bob"));
        let mut ids = Vec::new();
        for i in 0..3 {
            let m = storage
                .queue_outgoing(&alice, &bob, Payload::Text(format!("m{i}")))
                .await
                .unwrap();
            ids.push(m.id);
        }
        // One refused by bob's host, then the rest because the directory forgot bob.
        let refused = storage
            .set_failed(&bob, vec![ids[0]], FailReason::Refused)
            .await
            .unwrap();
        assert_eq!(refused, vec![ids[0]]);
        let mut gone = storage
            .fail_outbox(&bob, FailReason::UnknownUser)
            .await
            .unwrap();
        gone.sort();
        let mut rest = vec![ids[1], ids[2]];
        rest.sort();
        assert_eq!(gone, rest, "only what was still queued");
        assert!(storage.outbox(&bob, 0, 10).await.unwrap().is_empty());
        assert_eq!(storage.queued_count().await.unwrap(), 0);
        let history = storage.history(&bob, 0).await.unwrap();
        let reasons: Vec<(Status, FailReason)> =
            history.iter().map(|m| (m.status, m.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                (Status::Failed, FailReason::Refused),
                (Status::Failed, FailReason::UnknownUser),
                (Status::Failed, FailReason::UnknownUser),
            ]
        );
        // A record that comes to name an address this host never connects to.
        storage
            .queue_outgoing(&alice, &bob, Payload::Text("m3".into()))
            .await
            .unwrap();
        let gone = storage
            .fail_outbox(&bob, FailReason::AddressRefused)
            .await
            .unwrap();
        assert_eq!(gone.len(), 1);
        let history = storage.history(&bob, 0).await.unwrap();
        assert_eq!(history[3].reason, FailReason::AddressRefused);
        assert_eq!(history[3].reason.as_str(), "address-refused");
        // A status no version ever wrote is an error when read, not a guess.
        let db = Connection::open(dir.path().join("host.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        db.execute("UPDATE messages SET status = 9", []).unwrap();
        drop(db);
        let err = storage.history(&bob, 0).await.unwrap_err();
        assert!(
            err.to_string().contains("unknown message status 9"),
            "{err}"
        );
    });
}

#[test]
fn an_incoming_id_that_is_one_of_ours_is_refused_and_changes_nothing() {
    run(async {
        let (_dir, s) = open();
        let (alice, bob) = (name("alice"), name("bob"));
        let ours = s
            .queue_outgoing(&bob, &alice, Payload::Text("mine".into()))
            .await
            .unwrap();
        // Alice's host sends a message under the id of bob's own message to her.
        let mut theirs = incoming("alice", "bob", now_ms(), "same id", &[]);
        theirs.id = ours.id;
        assert_eq!(arrive(&s, &theirs).await, Arrival::Collision);
        let history = s.history(&alice, 0).await.unwrap();
        assert_eq!(texts(&history), vec!["mine".to_string()]);
        // So deleting that id deletes exactly one message: ours.
        assert_eq!(s.delete(&alice, Some(ours.id), None).await.unwrap(), 1);
    });
}

#[test]
fn a_checkpoint_another_reader_holds_back_is_reported_not_ignored() {
    run(async {
        let (dir, s) = open();
        let (alice, bob) = (name("alice"), name("bob"));
        let m = s
            .queue_outgoing(&bob, &alice, Payload::Text("to be wiped".into()))
            .await
            .unwrap();
        // A reader (a backup tool, say) holds a snapshot of the database open.
        let reader = Connection::open(dir.path().join("host.db")).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM messages;")
            .unwrap();
        let err = s.delete(&alice, Some(m.id), None).await.unwrap_err();
        assert!(matches!(err, StorageError::CheckpointBusy), "{err}");
        assert!(
            HostError::from(err).message.contains("not yet wiped"),
            "the device hears what happened"
        );
        // The message is gone all the same, and once the reader lets go the WAL is wiped.
        assert!(s.history(&alice, 0).await.unwrap().is_empty());
        reader.execute_batch("COMMIT").unwrap();
        drop(reader);
        s.checkpoint().await.unwrap();
        let wal = std::fs::metadata(dir.path().join("host.db-wal")).map(|m| m.len());
        assert_eq!(wal.unwrap_or(0), 0, "the WAL is truncated");
    });
}

/// Review finding 7 (tombstones): a deleted received message leaves neither its id nor its
/// chain hash (plain, or as the keyed form the messages table stored) anywhere in the raw
/// bytes of the database and its WAL, yet a resend is still a duplicate and the hash chain
/// still knows where the deleted message stood.
#[test]
fn a_deleted_received_message_leaves_neither_its_id_nor_its_chain_hash_on_disk() {
    run(async {
        let (dir, s) = open();
        let bob = name("bob");
        let m1 = incoming("bob", "alice", 1, "one", &[]);
        let m2 = incoming("bob", "alice", 2, "two", &hash(&m1));
        let m3 = incoming("bob", "alice", 3, "three", &hash(&m2));
        for m in [&m1, &m2, &m3] {
            assert!(matches!(arrive(&s, m).await, Arrival::Stored(_)));
        }
        let stored_chain = s.keys.chain_tag(&hash(&m2)).unwrap();
        assert!(contains(&on_disk(&dir), &m2.id.0), "the id is there first");

        assert_eq!(s.delete(&bob, Some(m2.id), None).await.unwrap(), 1);
        let disk = on_disk(&dir);
        assert!(
            !contains(&disk, &m2.id.0),
            "the deleted message's id is on disk"
        );
        assert!(!contains(&disk, &hash(&m2)), "its chain hash is on disk");
        assert!(
            !contains(&disk, &stored_chain),
            "its keyed chain hash is on disk"
        );

        // A resend is still a duplicate.
        assert_eq!(arrive(&s, &m2).await, Arrival::Duplicate);
        // A message that names the deleted one as its predecessor (the sender's host forked
        // its chain, say) is out of order, as it would be had nothing been deleted: it must
        // not count as a gap and pull the head back.
        let fork = incoming("bob", "alice", 4, "fork", &hash(&m2));
        assert_eq!(
            arrive(&s, &fork).await,
            Arrival::Stored(Integrity::OutOfOrder)
        );
        let m4 = incoming("bob", "alice", 5, "four", &hash(&m3));
        assert_eq!(arrive(&s, &m4).await, Arrival::Stored(Integrity::Ok));
    });
}

/// Migration 11: a page of history is read along an index, backwards, not sorted.
#[test]
fn a_page_of_history_is_a_range_of_an_index_not_a_sort() {
    let keys = Arc::new(AtRest::new(AeadKey::generate()).unwrap());
    let mut c = Connection::open_in_memory().unwrap();
    register_tombstone_functions(&c, &keys).unwrap();
    smvs_sqlite::migrate(&mut c, MIGRATIONS).unwrap();
    let plan: Vec<String> = c
        .prepare(&format!("EXPLAIN QUERY PLAN {HISTORY_PAGE}"))
        .unwrap()
        .query_map(params![&[1u8; 16][..], i64::MAX, 101], |r| r.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let plan = plan.join("; ");
    assert!(plan.contains("messages_history"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
}

/// Migration 10: events named their message by its keyed mark; they name its row now, and
/// deleting the message still deletes them.
#[test]
fn events_of_a_message_name_its_row_after_the_migration() {
    let keys = Arc::new(AtRest::new(AeadKey::generate()).unwrap());
    let mut c = Connection::open_in_memory().unwrap();
    register_tombstone_functions(&c, &keys).unwrap();
    smvs_sqlite::migrate(&mut c, &MIGRATIONS[..10]).unwrap();
    let tag = keys.tag(&name("bob")).unwrap();
    c.execute(
        "INSERT INTO conversations (tag, sealed_peer, wrapped_key) VALUES (?1, x'00', x'00')",
        [&tag],
    )
    .unwrap();
    for (seq, id) in [(7i64, [1u8; 16]), (8, [2u8; 16])] {
        c.execute(
            "INSERT INTO messages (seq, tag, id, direction, status, integrity, stored_at, hash, sealed)
             VALUES (?1, ?2, ?3, 1, 3, 0, 0, x'', x'')",
            params![seq, tag, &id[..]],
        )
        .unwrap();
        c.execute(
            "INSERT INTO events (seq, at, tag, mark, sealed)
             VALUES (?1, 0, ?2, smvs_tombstone_mark(?2, ?3), x'')",
            params![seq - 6, tag, &id[..]],
        )
        .unwrap();
    }
    c.execute(
        "INSERT INTO events (seq, at, tag, mark, sealed) VALUES (3, 0, ?1, NULL, x'')",
        [&tag],
    )
    .unwrap();

    smvs_sqlite::migrate(&mut c, MIGRATIONS).unwrap();
    let rows: Vec<(i64, Option<i64>)> = c
        .prepare("SELECT seq, msg FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(rows, [(1, Some(7)), (2, Some(8)), (3, None)]);
    c.execute("DELETE FROM messages WHERE seq = 7", []).unwrap();
    let left: Vec<i64> = c
        .prepare("SELECT seq FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(left, [2, 3]);
}

/// Tombstones written by a version before migration 4 (conversation tag and plain id) are
/// turned into keyed marks when the database is opened: the plain ids are gone from the
/// file, and a resend of one of those messages is still a duplicate.
#[test]
fn plain_tombstones_from_before_are_keyed_on_open() {
    run(async {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("host.db");
        let key = AeadKey::generate();
        let old = incoming("bob", "alice", 1, "deleted long ago", &[]);
        {
            let keys = AtRest::new(AeadKey::from_bytes(key.expose()).unwrap()).unwrap();
            let tag = keys.tag(&name("bob")).unwrap();
            let mut c = Connection::open(&path).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.pragma_update(None, "secure_delete", "ON").unwrap();
            smvs_sqlite::migrate(&mut c, &MIGRATIONS[..4]).unwrap();
            c.execute(
                "INSERT INTO tombstones (tag, id, deleted_at) VALUES (?1, ?2, ?3)",
                params![tag, &old.id.0[..], now_ms()],
            )
            .unwrap();
        }
        assert!(contains(&on_disk(&dir), &old.id.0));

        let s = Storage::open(&path, key).unwrap();
        assert!(
            !contains(&on_disk(&dir), &old.id.0),
            "the plain id is still on disk after the migration"
        );
        assert_eq!(arrive(&s, &old).await, Arrival::Duplicate);
    });
}

#[test]
fn the_event_log_is_sealed_and_forgets_what_a_deletion_deletes() {
    use crate::model::HostEvent;
    run(async {
        let (dir, s) = open();
        let bob = name("bob");
        let m1 = incoming("bob", "alice", now_ms(), "one", &[]);
        let m2 = incoming("bob", "alice", now_ms(), "two", &hash(&m1));
        let m3 = incoming("carol", "alice", now_ms(), "three", &[]);
        let mut events = Vec::new();
        for m in [&m1, &m2, &m3] {
            arrive(&s, m).await;
            events.push(HostEvent::MessageReceived {
                id: m.id,
                peer: m.peer.clone(),
                time: m.time,
            });
        }
        events.push(HostEvent::KeyChanged { peer: bob.clone() });
        events.push(HostEvent::DeviceLinked {
            name: "laptop".into(),
        });
        for (seq, e) in (1..).zip(&events) {
            s.append_event(seq, now_ms(), e.clone()).await.unwrap();
        }
        let page = s.events_after(0, 5, 100).await.unwrap();
        assert!(page.complete && !page.pruned);
        let got: Vec<HostEvent> = page.events.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(got, events);
        assert_eq!(
            page.events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        // Paged: two at a time.
        let page = s.events_after(1, 5, 2).await.unwrap();
        assert!(!page.complete);
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.events[0].0, 2);
        // Sealed: no id, no name in the file.
        s.checkpoint().await.unwrap();
        let disk = on_disk(&dir);
        assert!(!contains(&disk, m3.id.to_hex().as_bytes()));
        assert!(!contains(&disk, b"laptop"));

        // Deleting a message deletes what the log says of it; deleting the conversation, the
        // rest of bob's. carol's and the device's stay, and the head does not go back.
        s.delete(&bob, Some(m1.id), None).await.unwrap();
        let left = s.events_after(0, 5, 100).await.unwrap();
        assert_eq!(
            left.events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        s.delete(&bob, None, None).await.unwrap();
        let left = s.events_after(0, 5, 100).await.unwrap();
        assert_eq!(
            left.events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [3, 5]
        );
        assert!(
            !left.pruned,
            "deleted is not pruned: nothing a device must resync for"
        );
        assert_eq!(s.event_log_state().await.unwrap().head, 5);
        // An event about a message deleted before its append is not written (the head moves).
        s.append_event(
            6,
            now_ms(),
            HostEvent::MessageStatus {
                id: m2.id,
                peer: bob.clone(),
                status: Status::Received,
            },
        )
        .await
        .unwrap();
        let left = s.events_after(0, 6, 100).await.unwrap();
        assert_eq!(left.events.len(), 2);
        assert_eq!(s.event_log_state().await.unwrap().head, 6);
    });
}

#[test]
fn a_run_of_events_is_appended_in_one_job_as_each_would_be_alone() {
    use crate::model::HostEvent;
    run(async {
        let (_dir, s) = open();
        let bob = name("bob");
        let kept = incoming("bob", "alice", now_ms(), "kept", &[]);
        arrive(&s, &kept).await;
        let gone = MessageId::random();
        let later = now_ms() + (EVENT_LOG_DAYS + 1) * DAY_MS;
        let status = |id| HostEvent::MessageStatus {
            id,
            peer: bob.clone(),
            status: Status::Received,
        };
        // Seq 2 is about a message that is not (or no longer) there: not written, and the head
        // still moves to the run's last seq. Seq 3 is dated a month later, seq 4 (a clock that
        // went back) not before it.
        let run_of = vec![
            (1, now_ms(), status(kept.id)),
            (2, now_ms(), status(gone)),
            (3, later, HostEvent::KeyChanged { peer: bob.clone() }),
            (4, now_ms(), HostEvent::KeyChanged { peer: bob.clone() }),
        ];
        s.append_events(run_of.clone()).await.unwrap();
        let page = s.events_after(0, 4, 100).await.unwrap();
        let expected: Vec<(u64, HostEvent)> = [0, 2, 3]
            .into_iter()
            .map(|i| (run_of[i].0, run_of[i].2.clone()))
            .collect();
        assert_eq!(page.events, expected);
        assert_eq!(s.event_log_state().await.unwrap().head, 4);
        // Seq 4 carries seq 3's later day: the expiry run a month on prunes neither.
        s.expire(later).await.unwrap();
        assert_eq!(s.events_after(2, 4, 100).await.unwrap().events.len(), 2);
        assert!(s.append_events(Vec::new()).await.is_ok());
    });
}

/// The conversation list: messages written by people (not control messages), unread ones
/// since the last `read`, the newest time; a conversation with only a setting is listed, one
/// with only control messages is not.
#[test]
fn conversations_count_messages_and_unread_ones() {
    run(async {
        let (_dir, s) = open();
        let (bob, carol, dave) = (name("bob"), name("carol"), name("dave"));
        let mut prev = Vec::new();
        for i in 0..3 {
            let m = incoming("bob", "alice", now_ms(), &format!("b{i}"), &prev);
            prev = hash(&m);
            arrive(&s, &m).await;
        }
        s.queue_outgoing(&name("alice"), &bob, Payload::Text("to bob".into()))
            .await
            .unwrap();
        s.set_expiry(&carol, 60).await.unwrap();
        let control = StoredMessage {
            payload: Payload::Expire(30),
            ..incoming("dave", "alice", now_ms(), "", &[])
        };
        arrive(&s, &control).await;
        let listed = |all: Vec<ConversationSummary>| -> Vec<(String, u32, u32, bool, u32)> {
            all.into_iter()
                .map(|c| {
                    (
                        c.peer.to_string(),
                        c.messages,
                        c.unread,
                        c.last_time > 0,
                        c.expire_seconds,
                    )
                })
                .collect()
        };
        let mut all = listed(s.conversations().await.unwrap());
        all.sort();
        assert_eq!(
            all,
            [
                ("bob".to_string(), 4, 3, true, 0),
                ("carol".to_string(), 0, 0, false, 60)
            ]
        );
        assert_eq!(s.mark_read(&bob).await.unwrap(), 3);
        let m = incoming("bob", "alice", now_ms(), "b3", &prev);
        arrive(&s, &m).await;
        let all = listed(s.conversations().await.unwrap());
        assert!(all.contains(&("bob".to_string(), 5, 1, true, 0)), "{all:?}");
        assert!(!all.iter().any(|c| c.0 == dave.as_str()));
    });
}

/// One id in both directions of a conversation (a peer reused one of ours, before such
/// arrivals were refused as collisions): each event goes with the row of its own direction, so
/// the peer's deletion of theirs takes what the log says of theirs, and nothing of ours.
#[test]
fn an_event_names_the_row_of_its_own_direction() {
    use crate::model::HostEvent;
    run(async {
        let (dir, s) = open();
        let bob = name("bob");
        let ours = s
            .queue_outgoing(&name("alice"), &bob, Payload::Text("ours".into()))
            .await
            .unwrap();
        // Their message under the same id, as an older host could have stored it.
        let c = Connection::open(dir.path().join("host.db")).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        c.execute(
            "INSERT INTO messages (tag, id, direction, status, integrity, stored_at, hash, sealed, control)
             SELECT tag, id, 1, 3, 0, stored_at, hash, sealed, 0 FROM messages WHERE id = ?1",
            [&ours.id.0[..]],
        )
        .unwrap();
        drop(c);
        let sent = HostEvent::MessageSent {
            id: ours.id,
            peer: bob.clone(),
            time: ours.time,
        };
        let received = HostEvent::MessageReceived {
            id: ours.id,
            peer: bob.clone(),
            time: ours.time,
        };
        s.append_events(vec![(1, now_ms(), sent.clone()), (2, now_ms(), received)])
            .await
            .unwrap();
        assert_eq!(s.events_after(0, 2, 100).await.unwrap().events.len(), 2);
        // bob deletes his: the log forgets his message, and keeps ours.
        s.delete_from_peer(&bob, vec![ours.id]).await.unwrap();
        let left = s.events_after(0, 2, 100).await.unwrap();
        assert_eq!(left.events, [(1, sent)]);
    });
}

#[test]
fn a_sent_status_is_heard_live_but_not_logged() {
    use crate::model::HostEvent;
    run(async {
        let (_dir, s) = open();
        let bob = name("bob");
        let id = s
            .queue_outgoing(&name("alice"), &bob, Payload::Text("hi".into()))
            .await
            .unwrap()
            .id;
        let status = |status| HostEvent::MessageStatus {
            id,
            peer: bob.clone(),
            status,
        };
        s.append_events(vec![
            (1, now_ms(), status(Status::Sent)),
            (2, now_ms(), status(Status::Delivered)),
        ])
        .await
        .unwrap();
        let page = s.events_after(0, 2, 100).await.unwrap();
        assert_eq!(page.events, [(2, status(Status::Delivered))]);
        assert_eq!(s.event_log_state().await.unwrap().head, 2);
    });
}

#[test]
fn old_events_are_pruned_and_a_reader_from_before_is_told() {
    use crate::model::HostEvent;
    run(async {
        let (_dir, s) = open();
        let event = |n: usize| HostEvent::DeviceRevoked {
            name: format!("device {n}"),
        };
        // Three events today; a month and a day later, a fourth, and the expiry run.
        for seq in 1..=3u64 {
            s.append_event(seq, now_ms(), event(seq as usize))
                .await
                .unwrap();
        }
        let later = now_ms() + (EVENT_LOG_DAYS + 1) * DAY_MS;
        s.append_event(4, later, event(4)).await.unwrap();
        s.expire(later).await.unwrap();
        let state = s.event_log_state().await.unwrap();
        assert_eq!((state.head, state.pruned_upto), (4, 3));
        let page = s.events_after(1, 4, 100).await.unwrap();
        assert!(page.pruned, "events after 1 were pruned");
        assert_eq!(page.events, vec![(4, event(4))]);
        assert!(!s.events_after(3, 4, 100).await.unwrap().pruned);
        // A clock that goes back does not date a new row before the newest one.
        s.append_event(5, now_ms() - 400 * DAY_MS, event(5))
            .await
            .unwrap();
        s.expire(later).await.unwrap();
        assert_eq!(s.events_after(3, 5, 100).await.unwrap().events.len(), 2);
    });
}

#[test]
fn cursors_are_kept_per_device_and_forgotten_with_it() {
    run(async {
        let (dir, s) = open();
        let (laptop, desk) = ("device:aa".to_string(), "device:bb".to_string());
        assert_eq!(
            s.cursor(laptop.clone(), "watch".into()).await.unwrap(),
            None
        );
        // Moving a cursor that was never made makes none.
        s.set_cursor(laptop.clone(), "watch".into(), 5)
            .await
            .unwrap();
        assert_eq!(s.cursor_count(laptop.clone()).await.unwrap(), 0);
        s.create_cursor(laptop.clone(), "watch".into(), 7)
            .await
            .unwrap();
        s.create_cursor(laptop.clone(), "agent".into(), 3)
            .await
            .unwrap();
        s.create_cursor(desk.clone(), "watch".into(), 9)
            .await
            .unwrap();
        // Made again: stays where it is.
        s.create_cursor(laptop.clone(), "watch".into(), 1)
            .await
            .unwrap();
        assert_eq!(
            s.cursor(laptop.clone(), "watch".into()).await.unwrap(),
            Some(7)
        );
        s.set_cursor(laptop.clone(), "watch".into(), 8)
            .await
            .unwrap();
        assert_eq!(s.cursor_count(laptop.clone()).await.unwrap(), 2);
        assert_eq!(
            s.cursor(laptop.clone(), "watch".into()).await.unwrap(),
            Some(8)
        );
        assert_eq!(
            s.cursor(desk.clone(), "watch".into()).await.unwrap(),
            Some(9)
        );
        s.forget_cursors(laptop.clone()).await.unwrap();
        assert_eq!(
            s.cursor(laptop.clone(), "watch".into()).await.unwrap(),
            None
        );
        // A late save from a stream that was just cut does not bring it back.
        s.set_cursor(laptop.clone(), "watch".into(), 10)
            .await
            .unwrap();
        assert_eq!(s.cursor_count(laptop.clone()).await.unwrap(), 0);
        assert_eq!(s.cursor(laptop, "agent".into()).await.unwrap(), None);
        assert_eq!(s.cursor(desk, "watch".into()).await.unwrap(), Some(9));
        // Keyed: the file does not name the devices or the cursors.
        s.checkpoint().await.unwrap();
        assert!(!contains(&on_disk(&dir), b"device:bb"));
    });
}

#[test]
fn received_messages_without_an_event_are_found_for_announcing() {
    use crate::model::HostEvent;
    run(async {
        let (_dir, s) = open();
        let m1 = incoming("bob", "alice", now_ms(), "logged", &[]);
        let m2 = incoming(
            "bob",
            "alice",
            now_ms(),
            "stored as the host died",
            &hash(&m1),
        );
        arrive(&s, &m1).await;
        arrive(&s, &m2).await;
        s.append_event(
            1,
            now_ms(),
            HostEvent::MessageReceived {
                id: m1.id,
                peer: m1.peer.clone(),
                time: m1.time,
            },
        )
        .await
        .unwrap();
        let missing = s.unannounced_messages().await.unwrap();
        assert_eq!(missing, vec![(name("bob"), m2.id, m2.time, Direction::In)]);
        // Announced (any event about it counts): nothing is missing any more.
        s.append_event(
            2,
            now_ms(),
            HostEvent::MessageReceived {
                id: m2.id,
                peer: m2.peer.clone(),
                time: m2.time,
            },
        )
        .await
        .unwrap();
        assert!(s.unannounced_messages().await.unwrap().is_empty());
        // A message sent whose (lazily appended) event a power cut took is found too.
        let sent = s
            .queue_outgoing(&name("alice"), &name("bob"), Payload::Text("sent".into()))
            .await
            .unwrap();
        let missing = s.unannounced_messages().await.unwrap();
        assert_eq!(
            missing,
            vec![(name("bob"), sent.id, sent.time, Direction::Out)]
        );
        s.append_events_lazily(vec![(
            3,
            now_ms(),
            HostEvent::MessageSent {
                id: sent.id,
                peer: name("bob"),
                time: sent.time,
            },
        )])
        .await
        .unwrap();
        assert!(s.unannounced_messages().await.unwrap().is_empty());
    });
}

/// A durable append reserves seqs past its own for lazy appends, and the state says so (the
/// hub numbers on after the reservation); a lazy append moves the head but reserves nothing.
#[test]
fn durable_event_appends_reserve_seqs_for_lazy_ones() {
    use crate::model::HostEvent;
    use crate::storage::LAZY_ROOM;
    run(async {
        let (_dir, s) = open();
        let state = s.event_log_state().await.unwrap();
        assert_eq!((state.head, state.reserved), (0, 0));
        let alarm = |peer: &str| HostEvent::KeyChanged { peer: name(peer) };
        s.append_event(1, now_ms(), alarm("bob")).await.unwrap();
        let state = s.event_log_state().await.unwrap();
        assert_eq!((state.head, state.reserved), (1, 1 + LAZY_ROOM));
        s.append_events_lazily(vec![(2, now_ms(), alarm("carol"))])
            .await
            .unwrap();
        let state = s.event_log_state().await.unwrap();
        assert_eq!((state.head, state.reserved), (2, 1 + LAZY_ROOM));
    });
}

fn epoch(id: u32, key: &AeadKey) -> Epoch {
    Epoch {
        id,
        key: AeadKey::from_bytes(key.expose()).unwrap(),
    }
}

fn epoch_keys(
    derived: &[u8],
    current: (u32, &AeadKey),
    previous: Option<(u32, &AeadKey)>,
) -> EpochKeys {
    EpochKeys {
        derived: Zeroizing::new(derived.to_vec()),
        current: epoch(current.0, current.1),
        previous: previous.map(|(id, key)| epoch(id, key)),
    }
}

/// A move to a new epoch re-seals everything (history, settings, sessions, the event log stay
/// readable; no value of before is left in the file or the WAL), records it, and the database
/// then opens only with the new epoch's key. A move cut short (the database under the previous
/// epoch) is reported on open, and a database under an epoch keyguard no longer holds does not
/// open.
#[test]
fn a_move_to_a_new_epoch_reseals_everything_and_the_old_key_opens_nothing() {
    run(async {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("host.db");
        let derived = smvs_crypto::random_array::<96>();
        let (one, two) = (AeadKey::generate(), AeadKey::generate());
        let bob = name("bob");
        let (s, work) =
            Storage::open_with_epochs(&path, epoch_keys(&derived, (1, &one), None)).unwrap();
        assert_eq!(work, EpochWork::None);
        let m = incoming("bob", "alice", now_ms(), "kept across epochs", &[]);
        arrive(&s, &m).await;
        s.set_setting("me", b"alice".to_vec()).await.unwrap();
        let contact = crate::model::Contact {
            username: bob.clone(),
            identity: smvs_crypto::IdentityKeys::generate().unwrap().bundle(),
            transport_key: smvs_crypto::AgreementKeyPair::generate().unwrap().public(),
            host_address: smvs_schema::HostAddress::parse("127.0.0.2:7421").unwrap(),
            address_signed_at: 1_700_000_000_000,
            serial: 7,
            serials: std::collections::BTreeMap::from([([9; 32], 7)]),
            blocked: false,
            pending: None,
            alarm: Some("default shows key 00; b shows key 11".into()),
            introduced_by: Some(name("carol")),
            moved_at: 1_700_000_000_001,
            refused: vec![smvs_crypto::IdentityKeys::generate().unwrap().bundle()],
            request: false,
            evidence: None,
        };
        s.put_contact(contact.clone()).await.unwrap();
        s.save_session(SessionWrite {
            peer: bob.clone(),
            state: Zeroizing::new(vec![2; 100]),
            prekey_transcript: None,
            confirmed: true,
        })
        .await
        .unwrap();
        let sealed_before: Vec<Vec<u8>> = {
            let c = Connection::open(&path).unwrap();
            let mut rows: Vec<Vec<u8>> = c
                .prepare(
                    "SELECT wrapped_key FROM conversations UNION ALL SELECT sealed_peer FROM conversations
                     UNION ALL SELECT last_recv_hash FROM conversations UNION ALL SELECT sealed FROM contacts
                     UNION ALL SELECT sealed FROM settings UNION ALL SELECT sealed FROM sessions
                     UNION ALL SELECT sealed FROM events",
                )
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            rows.retain(|r| !r.is_empty());
            rows
        };
        // Wrapped key, peer name, chain head, contact, setting, session.
        assert!(sealed_before.len() >= 6, "{}", sealed_before.len());

        // Cut short: keyguard began epoch 2, the database is still under 1.
        drop(s);
        let (s, work) =
            Storage::open_with_epochs(&path, epoch_keys(&derived, (2, &two), Some((1, &one))))
                .unwrap();
        assert_eq!(work, EpochWork::Move { from: 1 });
        assert_eq!(s.epoch(), 1);
        let moved = s.move_to_epoch(epoch(2, &two)).await.unwrap();
        assert!(moved >= sealed_before.len(), "{moved}");
        assert_eq!(s.epoch(), 2);
        assert_eq!(s.move_to_epoch(epoch(2, &two)).await.unwrap(), 0);
        // Everything reads as before, under the new key.
        let history = s.history(&bob, 0).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            history[0].payload,
            Payload::Text("kept across epochs".into())
        );
        assert_eq!(&s.setting("me").await.unwrap().unwrap()[..], b"alice");
        assert_eq!(&s.session(&bob).await.unwrap().unwrap()[..], &[2; 100][..]);
        assert_eq!(s.contact(&bob).await.unwrap(), Some(contact));
        assert_eq!(s.conversations().await.unwrap()[0].peer, bob);
        // The chain head moved too: the next message from bob is in order, not a gap.
        let next = incoming("bob", "alice", now_ms(), "next", &hash(&m));
        assert_eq!(arrive(&s, &next).await, Arrival::Stored(Integrity::Ok));
        let disk = on_disk(&dir);
        for old in &sealed_before {
            assert!(
                !contains(&disk, old),
                "a value sealed under epoch 1 is still on disk"
            );
        }
        drop(s);

        // Keyguard still holds epoch 1 (not retired yet): opening says so.
        let (s, work) =
            Storage::open_with_epochs(&path, epoch_keys(&derived, (2, &two), Some((1, &one))))
                .unwrap();
        assert_eq!(work, EpochWork::Retire(1));
        drop(s);
        // Under epoch 2 only now; keys of epoch 1 alone (an older keyguard, or a thief's
        // copy of them) do not open it, and a database of epoch 1 does not open with epoch 3.
        let e = Storage::open_with_epochs(&path, epoch_keys(&derived, (1, &one), None))
            .err()
            .unwrap();
        assert!(matches!(e, StorageError::EpochGone { found: 2, .. }), "{e}");
        let e =
            Storage::open_with_epochs(&path, epoch_keys(&derived, (3, &AeadKey::generate()), None))
                .err()
                .unwrap();
        assert!(matches!(e, StorageError::EpochGone { found: 2, .. }), "{e}");
        let (s, work) =
            Storage::open_with_epochs(&path, epoch_keys(&derived, (2, &two), None)).unwrap();
        assert_eq!(work, EpochWork::None);
        assert_eq!(s.history(&bob, 0).await.unwrap().len(), 2);
    });
}

/// A database from before epochs (no epoch recorded) is under epoch 1: it opens with epoch 1
/// and gets it recorded; with keyguard past epoch 1 it is refused rather than misread.
#[test]
fn a_database_from_before_epochs_is_epoch_1() {
    run(async {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("host.db");
        let key = AeadKey::generate();
        let derived = {
            // The derivations keyguard makes from an old storage key (storage_epochs.rs).
            let mut d = Vec::new();
            for label in [&b"conversation tags"[..], b"chain hashes", b"tombstones"] {
                d.extend_from_slice(
                    &smvs_crypto::hkdf_sha256(b"smvs-storage-v1", key.expose(), label, 32).unwrap(),
                );
            }
            d
        };
        {
            let s = Storage::open(&path, AeadKey::from_bytes(key.expose()).unwrap()).unwrap();
            arrive(&s, &incoming("bob", "alice", now_ms(), "old", &[])).await;
            // As a database from before epochs: no row.
            s.worker
                .call(|c| Ok::<_, StorageError>(c.execute("DELETE FROM storage_epoch", [])?))
                .await
                .unwrap();
        }
        let e =
            Storage::open_with_epochs(&path, epoch_keys(&derived, (2, &AeadKey::generate()), None))
                .err()
                .unwrap();
        assert!(matches!(e, StorageError::EpochGone { found: 1, .. }), "{e}");
        let (s, _) =
            Storage::open_with_epochs(&path, epoch_keys(&derived, (1, &key), None)).unwrap();
        assert_eq!(s.epoch(), 1);
        assert_eq!(s.history(&name("bob"), 0).await.unwrap().len(), 1);
    });
}

/// A peer's request to delete the whole conversation destroys the conversation's key, as the
/// user's own does: what stays (the request's row, what came after it) is sealed again under a
/// new key, and the old key, which an older copy of the database holds, opens none of it.
#[test]
fn a_peers_whole_conversation_delete_gives_the_conversation_a_new_key() {
    run(async {
        let (dir, s) = open();
        let bob = name("bob");
        let before = incoming("bob", "alice", now_ms(), "before the request", &[]);
        arrive(&s, &before).await;
        let mut request = incoming("bob", "alice", now_ms(), "", &hash(&before));
        request.payload = Payload::Delete(Vec::new());
        arrive(&s, &request).await;
        let after = incoming(
            "bob",
            "alice",
            now_ms(),
            "after the request",
            &hash(&request),
        );
        arrive(&s, &after).await;
        let read = |what: &'static str| {
            let c = Connection::open(dir.path().join("host.db")).unwrap();
            c.query_row(what, [], |r| r.get::<_, Vec<u8>>(0)).unwrap()
        };
        let old_wrapped = read("SELECT wrapped_key FROM conversations");
        let wrapped = old_wrapped.clone();
        let old_key = s
            .call(move |_, k| {
                let tag = k.tag(&name("bob"))?;
                Ok(k.unwrap_conversation_key(&tag, &wrapped)?)
            })
            .await
            .unwrap();

        assert_eq!(s.delete(&bob, None, Some(request.id)).await.unwrap(), 1);
        let history = s.history(&bob, 0).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            history[0].payload,
            Payload::Text("after the request".into())
        );
        assert_ne!(read("SELECT wrapped_key FROM conversations"), old_wrapped);
        assert!(
            !contains(&on_disk(&dir), &old_wrapped),
            "the old wrapped key is still on disk"
        );
        let kept = read(
            "SELECT sealed FROM messages WHERE id = x'' OR seq = (SELECT max(seq) FROM messages)",
        );
        let tag = s.call(|_, k| Ok(k.tag(&name("bob"))?)).await.unwrap();
        assert!(
            AtRest::open_message(&old_key, &tag, &after.id.0, 1, &kept).is_err(),
            "the old key still opens what stayed"
        );
    });
}
