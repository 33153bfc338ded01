//! Handshake and the two pumps of an established channel.

use std::net::SocketAddr;
use std::time::Duration;

use smvs_crypto::noise::{Handshake, NoiseReceiver, NoiseSender, MAX_MESSAGE_LEN, MAX_PAYLOAD_LEN};
use smvs_crypto::{constant_time_eq, AgreementKeyPair, AgreementPublicKey};
use smvs_schema::AddressKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::TransportError;

/// How long a peer may take (by default) to complete the handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TCP connect to one of several addresses a name resolves to may take before the
/// next address is tried.
const NEXT_ADDRESS_AFTER: Duration = Duration::from_secs(3);

/// Size of the in-memory pipe between the pumps and the RPC layer, per direction.
const PIPE_BYTES: usize = 256 * 1024;

/// An established, authenticated, encrypted link: a plaintext byte stream to the peer.
pub struct SecureChannel {
    /// The peer's static Noise key, as proven by the handshake.
    pub remote_key: AgreementPublicKey,
    pub peer: SocketAddr,
    /// Reads give what the peer sent; writes are encrypted and sent.
    pub stream: DuplexStream,
}

/// Connects to `addr`, runs the handshake as initiator and, if `expected` is given, refuses any
/// other remote static key.
pub async fn connect(
    addr: impl ToSocketAddrs + std::fmt::Display,
    local: &AgreementKeyPair,
    prologue: &[u8],
    expected: Option<&AgreementPublicKey>,
) -> Result<SecureChannel, TransportError> {
    let shown = addr.to_string();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| TransportError::Io {
            peer: shown.clone(),
            action: "connecting to",
            source,
        })?;
    connect_over(tcp, &shown, local, prologue, expected).await
}

/// [`connect`] to a peer whose address someone else chose (a contact's host, as the directory
/// published it), from a host on a network of kind `ours`: the name is resolved once, and if
/// any address it resolves to is of a kind `ours` may not reach ([`AddressKind::may_reach`]:
/// loopback, link-local, private or shared unless `ours` is that kind too; unspecified or
/// multicast never), nothing is connected to. Then the addresses are tried in order, those
/// same addresses, so a name that resolves differently a moment later (DNS rebinding) cannot
/// slip another address in between the check and the connection.
pub async fn connect_within(
    ours: AddressKind,
    addr: &str,
    local: &AgreementKeyPair,
    prologue: &[u8],
    expected: Option<&AgreementPublicKey>,
) -> Result<SecureChannel, TransportError> {
    let io = |action, source| TransportError::Io {
        peer: addr.to_owned(),
        action,
        source,
    };
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| io("resolving", e))?
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .collect();
    for a in &resolved {
        let kind = AddressKind::of(a.ip());
        if !ours.may_reach(kind) {
            return Err(TransportError::AddressRefused {
                peer: addr.to_owned(),
                address: a.ip(),
                kind: kind.describe(),
            });
        }
    }
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the name resolves to no address",
    );
    let count = resolved.len();
    for (i, a) in resolved.into_iter().enumerate() {
        // An address that is silently dropped must not use up the caller's whole time limit
        // while the next one would answer (an IPv6 path that is down, say): every address but
        // the last gets a few seconds.
        let connecting = TcpStream::connect(a);
        let connected = if i + 1 < count {
            match tokio::time::timeout(NEXT_ADDRESS_AFTER, connecting).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            }
        } else {
            connecting.await
        };
        match connected {
            Ok(tcp) => return connect_over(tcp, addr, local, prologue, expected).await,
            Err(e) => last = e,
        }
    }
    Err(io("connecting to", last))
}

/// Runs the initiator's handshake over a TCP stream that is already connected (for example
/// through a SOCKS5 proxy); `shown` names the peer in errors.
pub async fn connect_over(
    tcp: TcpStream,
    shown: &str,
    local: &AgreementKeyPair,
    prologue: &[u8],
    expected: Option<&AgreementPublicKey>,
) -> Result<SecureChannel, TransportError> {
    let peer = tcp.peer_addr().map_err(|source| TransportError::Io {
        peer: shown.to_owned(),
        action: "reading the address of",
        source,
    })?;
    let handshake =
        Handshake::initiator(local, prologue).map_err(|e| TransportError::Handshake {
            peer,
            reason: e.to_string(),
        })?;
    let channel = establish(tcp, peer, handshake, HANDSHAKE_TIMEOUT, expected).await?;
    if let Some(expected) = expected {
        if !constant_time_eq(channel.remote_key.as_bytes(), expected.as_bytes()) {
            return Err(TransportError::KeyMismatch {
                peer,
                presented: channel.remote_key.to_hex(),
                expected: expected.to_hex(),
            });
        }
    }
    Ok(channel)
}

/// Runs the handshake as responder on an accepted connection. The caller checks
/// `remote_key` against whatever it trusts.
pub async fn accept(
    tcp: TcpStream,
    local: &AgreementKeyPair,
    prologue: &[u8],
    timeout: Duration,
) -> Result<SecureChannel, TransportError> {
    let peer = tcp.peer_addr().map_err(|source| TransportError::Io {
        peer: "an accepted connection".into(),
        action: "reading the address of",
        source,
    })?;
    let handshake =
        Handshake::responder(local, prologue).map_err(|e| TransportError::Handshake {
            peer,
            reason: e.to_string(),
        })?;
    establish(tcp, peer, handshake, timeout, None).await
}

async fn establish(
    tcp: TcpStream,
    peer: SocketAddr,
    mut handshake: Handshake,
    timeout: Duration,
    expected: Option<&AgreementPublicKey>,
) -> Result<SecureChannel, TransportError> {
    // Small RPC messages must leave at once; the writer pump already coalesces.
    let _ = tcp.set_nodelay(true);
    let (read, mut write) = tcp.into_split();
    let mut read = BufReader::new(read);
    let fail = |reason: String| TransportError::Handshake { peer, reason };

    match tokio::time::timeout(
        timeout,
        run_handshake(&mut handshake, &mut read, &mut write, expected),
    )
    .await
    {
        Err(_) => {
            return Err(TransportError::HandshakeTimeout {
                peer,
                secs: timeout.as_secs(),
            })
        }
        Ok(Err(HandshakeFailure::Broken(reason))) => return Err(fail(reason)),
        Ok(Err(HandshakeFailure::NotPinned(presented))) => {
            return Err(TransportError::KeyMismatch {
                peer,
                presented: presented.to_hex(),
                expected: expected.map(|k| k.to_hex()).unwrap_or_default(),
            })
        }
        Ok(Ok(())) => {}
    }

    let (remote_key, sender, receiver) = handshake
        .into_transport()
        .map_err(|e| fail(e.to_string()))?;
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let (pipe_read, pipe_write) = tokio::io::split(theirs);
    tokio::spawn(reader_pump(read, receiver, pipe_write, peer));
    tokio::spawn(writer_pump(pipe_read, sender, write, peer));
    Ok(SecureChannel {
        remote_key,
        peer,
        stream: ours,
    })
}

/// Exchanges handshake messages, one frame each, until the handshake is finished.
/// Why a handshake did not finish.
enum HandshakeFailure {
    Broken(String),
    /// The peer showed another static key than the pinned one; ours was never sent.
    NotPinned(AgreementPublicKey),
}

async fn run_handshake(
    handshake: &mut Handshake,
    read: &mut (impl AsyncRead + Unpin),
    write: &mut (impl AsyncWrite + Unpin),
    expected: Option<&AgreementPublicKey>,
) -> Result<(), HandshakeFailure> {
    let broken = |e: &dyn std::fmt::Display| HandshakeFailure::Broken(e.to_string());
    while !handshake.is_finished() {
        if handshake.is_my_turn() {
            let msg = handshake.write_message().map_err(|e| broken(&e))?;
            write_frame(write, &msg).await.map_err(|e| broken(&e))?;
        } else {
            let msg = read_frame(read).await.map_err(|e| broken(&e))?;
            handshake.read_message(&msg).map_err(|e| broken(&e))?;
            // Checked as soon as the peer's key is known: an impostor must not learn ours
            // (it would identify us across networks), so we stop before sending it.
            if let (Some(expected), Some(theirs)) = (expected, handshake.remote_static()) {
                if !constant_time_eq(theirs.as_bytes(), expected.as_bytes()) {
                    return Err(HandshakeFailure::NotPinned(theirs));
                }
            }
        }
    }
    Ok(())
}

async fn read_frame(read: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let len = usize::from(read.read_u16().await?);
    let mut buf = vec![0u8; len];
    read.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(write: &mut (impl AsyncWrite + Unpin), msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    write.write_all(&out).await
}

/// TCP → decrypt → pipe. Any bad frame ends the connection: Noise nonces make a lost or altered
/// frame unrecoverable, and a peer that sends one is not worth talking to.
async fn reader_pump(
    mut read: impl AsyncRead + Unpin,
    mut receiver: NoiseReceiver,
    mut pipe: impl AsyncWrite + Unpin,
    peer: SocketAddr,
) {
    let mut plain = Vec::with_capacity(MAX_MESSAGE_LEN);
    loop {
        let frame = match read_frame(&mut read).await {
            Ok(frame) => frame,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, error = %e, "link read ended");
                }
                break;
            }
        };
        plain.clear();
        if receiver.decrypt(&frame, &mut plain).is_err() {
            tracing::warn!(%peer, "dropping link: a frame failed to decrypt");
            break;
        }
        if pipe.write_all(&plain).await.is_err() {
            break;
        }
    }
    let _ = pipe.shutdown().await;
}

/// pipe → encrypt → TCP. Each read takes whatever the RPC layer has written so far (up to one
/// pipe's worth), so many small messages leave in few TCP writes.
async fn writer_pump(
    mut pipe: tokio::io::ReadHalf<DuplexStream>,
    mut sender: NoiseSender,
    mut write: impl AsyncWrite + Unpin,
    peer: SocketAddr,
) {
    let mut plain = vec![0u8; PIPE_BYTES];
    let mut wire = Vec::with_capacity(PIPE_BYTES + 1024);
    loop {
        let n = match pipe.read(&mut plain).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wire.clear();
        for chunk in plain[..n].chunks(MAX_PAYLOAD_LEN) {
            let len_at = wire.len();
            wire.extend_from_slice(&[0, 0]);
            if sender.encrypt(chunk, &mut wire).is_err() {
                tracing::warn!(%peer, "dropping link: encryption failed");
                return;
            }
            let frame_len = u16::try_from(wire.len() - len_at - 2).unwrap_or(u16::MAX);
            wire[len_at..len_at + 2].copy_from_slice(&frame_len.to_be_bytes());
        }
        if let Err(e) = write.write_all(&wire).await {
            tracing::debug!(%peer, error = %e, "link write ended");
            break;
        }
    }
    let _ = write.shutdown().await;
}

/// What the fuzz targets in `fuzz/` drive: the responder's handshake and the reader pump, fed
/// bytes as a peer would send them. Public (and hidden) only so that the fuzzers run this
/// module's code rather than a copy of it.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The responder's side of the handshake over `input` (what the peer sent); what we would
    /// answer is discarded. Ok when the bytes completed the handshake.
    pub async fn respond(
        local: &AgreementKeyPair,
        prologue: &[u8],
        input: &[u8],
    ) -> Result<(), String> {
        let mut handshake = Handshake::responder(local, prologue).map_err(|e| e.to_string())?;
        let mut read = input;
        run_handshake(&mut handshake, &mut read, &mut tokio::io::sink(), None)
            .await
            .map_err(|e| match e {
                HandshakeFailure::Broken(reason) => reason,
                HandshakeFailure::NotPinned(key) => format!("not the pinned key: {}", key.to_hex()),
            })
    }

    /// The reader pump of an established link over `input`: returns the plaintext it forwards.
    pub async fn read_frames(receiver: NoiseReceiver, input: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        reader_pump(input, receiver, &mut plain, peer).await;
        plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(
        pinned: Option<AgreementPublicKey>,
    ) -> (
        Result<SecureChannel, TransportError>,
        Result<SecureChannel, TransportError>,
        AgreementKeyPair,
        AgreementKeyPair,
    ) {
        let server_key = AgreementKeyPair::generate().unwrap();
        let client_key = AgreementKeyPair::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let expected = pinned.unwrap_or(server_key.public());
        let (server, client) = tokio::join!(
            async {
                let (tcp, _) = listener.accept().await.unwrap();
                accept(tcp, &server_key, b"test", HANDSHAKE_TIMEOUT).await
            },
            connect(addr, &client_key, b"test", Some(&expected))
        );
        (server, client, server_key, client_key)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_keys_are_seen() {
        let (server, client, server_key, client_key) = pair(None).await;
        let mut server = server.unwrap();
        let mut client = client.unwrap();
        assert_eq!(server.remote_key, client_key.public());
        assert_eq!(client.remote_key, server_key.public());
        let big = vec![7u8; 200_000];
        client.stream.write_all(&big).await.unwrap();
        let mut got = vec![0u8; big.len()];
        server.stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        server.stream.write_all(b"pong").await.unwrap();
        let mut pong = [0u8; 4];
        client.stream.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"pong");
    }

    #[tokio::test]
    async fn dropping_one_end_closes_the_other() {
        let (server, client, _, _) = pair(None).await;
        let mut server = server.unwrap();
        drop(client.unwrap());
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            server.stream.read(&mut buf),
        )
        .await
        .expect("the server sees the end")
        .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn a_pinned_key_that_differs_is_refused() {
        let other = AgreementKeyPair::generate().unwrap().public();
        let (server, client, _, _) = pair(Some(other)).await;
        assert!(matches!(client, Err(TransportError::KeyMismatch { .. })));
        // The initiator stopped before its third message: the impostor never learnt its key.
        assert!(server.is_err(), "the responder finished the handshake");
    }

    #[tokio::test]
    async fn garbage_and_silence_fail_the_handshake() {
        let server_key = AgreementKeyPair::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage
            .write_all(&[0x00, 0x05, 1, 2, 3, 4, 5])
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let err = accept(tcp, &server_key, b"test", HANDSHAKE_TIMEOUT)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, TransportError::Handshake { .. }), "{err}");

        let _silent = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let err = accept(tcp, &server_key, b"test", Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, TransportError::HandshakeTimeout { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_a_local_kind_is_refused_before_connecting() {
        let server_key = AgreementKeyPair::generate().unwrap();
        let client_key = AgreementKeyPair::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let name = format!("localhost:{port}");
        let expected = server_key.public();
        for (ours, addr) in [
            (AddressKind::Public, name.as_str()),
            (AddressKind::Private, name.as_str()),
            (AddressKind::Public, "10.0.0.1:9"),
            (AddressKind::Loopback, "0.0.0.0:9"),
        ] {
            let refused = connect_within(ours, addr, &client_key, b"test", Some(&expected)).await;
            assert!(
                matches!(refused, Err(TransportError::AddressRefused { .. })),
                "{ours:?} {addr}"
            );
        }
        // From loopback, the same name is reached; and the first connection the listener sees
        // is this one (had a refused attempt connected, its dead socket would come first and
        // fail the handshake).
        let (server, client) = tokio::join!(
            async {
                let (tcp, _) = listener.accept().await.unwrap();
                accept(tcp, &server_key, b"test", HANDSHAKE_TIMEOUT).await
            },
            connect_within(
                AddressKind::Loopback,
                &name,
                &client_key,
                b"test",
                Some(&expected)
            )
        );
        assert_eq!(server.unwrap().remote_key, client_key.public());
        assert_eq!(client.unwrap().remote_key, expected);
    }
}
