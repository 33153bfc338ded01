//! One suite for both storage backends of the directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use smvs_crypto::{AgreementKeyPair, IdentityKeys, SignContext};
use smvs_directory::store::{NewKeys, Store, StoreError};
use smvs_directory::UserRecord;
use smvs_schema::{canonical, HostAddress, Username};

fn user(name: &str) -> UserRecord {
    let username = Username::parse(name).unwrap();
    let identity = IdentityKeys::generate().unwrap();
    let transport = AgreementKeyPair::generate().unwrap().public();
    UserRecord {
        transport_certificate: identity.signing.sign(
            SignContext::TransportCertificate,
            &canonical::transport_certificate(&username, &transport),
        ),
        username,
        identity: identity.bundle(),
        transport_key: transport,
        host_address: HostAddress::parse("127.0.0.1:7421").unwrap(),
        serial: 0,
    }
}

async fn suite(store: Store) {
    let alice = user("alice");
    let name = alice.username.clone();
    let stored = store.insert_user(alice.clone()).await.unwrap();
    assert!(stored.serial > 0);
    assert!(matches!(
        store.insert_user(user("alice")).await,
        Err(StoreError::Taken)
    ));
    let got = store.get_user(&name).await.unwrap().unwrap();
    assert_eq!(got, stored);
    assert!(store
        .get_user(&Username::parse("nobody").unwrap())
        .await
        .unwrap()
        .is_none());

    let host = HostAddress::parse("[::1]:9").unwrap();
    let moved = store.update_host(&name, &host).await.unwrap().unwrap();
    assert_eq!(moved.host_address, host);
    assert!(moved.serial > stored.serial);

    let fresh = user("alice");
    let keys = NewKeys {
        identity: fresh.identity,
        transport_key: fresh.transport_key,
        transport_certificate: fresh.transport_certificate,
    };
    let rotated = store.replace_keys(&name, keys).await.unwrap().unwrap();
    assert_eq!(rotated.identity, fresh.identity);
    assert_eq!(rotated.host_address, host);
    assert!(rotated.serial > moved.serial);

    // Tokens: single use, bound to the user, expiry honoured.
    let now = smvs_directory::clock::now_ms();
    let t = smvs_crypto::blake2b_256(b"token");
    store.put_token(t, &name, now + 60_000, now).await.unwrap();
    assert!(!store
        .take_token(t, &Username::parse("bob").unwrap(), now)
        .await
        .unwrap());
    // Presented for the wrong user it is refused and stays for its owner.
    assert!(store.take_token(t, &name, now).await.unwrap());
    assert!(!store.take_token(t, &name, now).await.unwrap());
    let old = smvs_crypto::blake2b_256(b"old");
    store
        .put_token(old, &name, now - 1, now - 61_000)
        .await
        .unwrap();
    assert!(!store.take_token(old, &name, now).await.unwrap());
    store
        .put_token(
            smvs_crypto::blake2b_256(b"pending"),
            &name,
            now + 60_000,
            now,
        )
        .await
        .unwrap();

    assert!(store.delete_user(&name).await.unwrap());
    assert!(!store.delete_user(&name).await.unwrap());
    assert_eq!(store.counts().await.unwrap(), (0, 0));
    assert!(store.update_host(&name, &host).await.unwrap().is_none());
    let again = store.insert_user(user("alice")).await.unwrap();
    assert!(
        again.serial > rotated.serial,
        "serials never go back, even after deletion"
    );
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("d.db").display());
    suite(Store::open(&url).await.unwrap()).await;
    // Reopening runs no migration twice and keeps the data.
    let reopened = Store::open(&url).await.unwrap();
    assert_eq!(reopened.counts().await.unwrap().0, 1);
}

#[tokio::test]
async fn postgres_store() {
    let url = smvs_tests::postgres::fresh_database().await.unwrap();
    suite(Store::open(&url).await.unwrap()).await;
    let reopened = Store::open(&url).await.unwrap();
    assert_eq!(reopened.counts().await.unwrap().0, 1);
}

#[tokio::test]
async fn bad_database_urls_are_refused() {
    for bad in ["", "mysql://x", "sqlite:", "/tmp/x.db"] {
        assert!(
            matches!(Store::open(bad).await, Err(StoreError::BadUrl(_))),
            "{bad}"
        );
    }
}
