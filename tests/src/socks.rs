//! A minimal SOCKS5 proxy for tests: the stand-in for Tor when a host is published under an
//! onion-style name that only the proxy resolves.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A minimal SOCKS5 proxy (RFC 1928: no authentication, CONNECT only) that resolves every name
/// ending in `.onion` to `hidden`, and records what it was asked to reach.
pub async fn socks5_proxy(
    listener: TcpListener,
    hidden: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
) {
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
            seen.lock().ok()?.push(format!("{target}:{port}"));
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
