//! Anonymity: a host reaches other hosts through a SOCKS5 proxy (as it would through Tor), and
//! a host may publish a name only the proxy can resolve (as an onion address).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smvs_tests::runtime::runtime_and_directory;
use smvs_tests::HostProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A minimal SOCKS5 proxy (RFC 1928: no authentication, CONNECT only) that resolves every name
/// ending in `.onion` to `hidden`, and records what it was asked to reach.
async fn socks5_proxy(listener: TcpListener, hidden: SocketAddr, seen: Arc<Mutex<Vec<String>>>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut head = [0u8; 2];
            client.read_exact(&mut head).await.ok()?;
            let mut methods = vec![0u8; usize::from(head[1])];
            client.read_exact(&mut methods).await.ok()?;
            client.write_all(&[5, 0]).await.ok()?;
            let mut req = [0u8; 4];
            client.read_exact(&mut req).await.ok()?;
            let target = match req[3] {
                3 => {
                    let mut len = [0u8; 1];
                    client.read_exact(&mut len).await.ok()?;
                    let mut name = vec![0u8; usize::from(len[0])];
                    client.read_exact(&mut name).await.ok()?;
                    String::from_utf8(name).ok()?
                }
                1 => {
                    let mut ip = [0u8; 4];
                    client.read_exact(&mut ip).await.ok()?;
                    std::net::Ipv4Addr::from(ip).to_string()
                }
                _ => return None,
            };
            let mut port = [0u8; 2];
            client.read_exact(&mut port).await.ok()?;
            let port = u16::from_be_bytes(port);
            seen.lock().unwrap().push(format!("{target}:{port}"));
            let upstream = if target.ends_with(".onion") {
                hidden
            } else {
                format!("{target}:{port}").parse().ok()?
            };
            let mut server = TcpStream::connect(upstream).await.ok()?;
            client
                .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
                .await
                .ok()?;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            Some(())
        });
    }
}

#[test]
fn messages_reach_an_onion_style_address_through_a_socks5_proxy() {
    let (rt, dir) = runtime_and_directory().unwrap();
    // Bob's host publishes a name that only the proxy resolves.
    let mut bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    let onion = format!("bobhiddenservice.onion:{}", bob.listen.port());
    bob.stop().unwrap();
    bob.add_flags(&["--public-address", &onion]);
    bob.start_again().unwrap();
    bob.register().unwrap();
    assert_eq!(
        bob.ctl_json(&["status"]).unwrap()["host_address"],
        onion.as_str()
    );

    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    rt.spawn(socks5_proxy(listener, bob.listen, seen.clone()));

    let alice = HostProcess::start(
        "alice",
        &dir,
        "127.0.0.1",
        &["--socks5-proxy", &proxy_addr.to_string()],
    )
    .unwrap();
    alice.register().unwrap();
    let id = alice.send("bob", "through the proxy").unwrap();
    let got = bob
        .wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    assert_eq!(got[0]["id"], id.as_str());
    alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h[0]["status"] == "delivered"
        })
        .unwrap();
    // The proxy was asked for the name, not an address: resolution happened at the proxy.
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        std::slice::from_ref(&onion)
    );
}
