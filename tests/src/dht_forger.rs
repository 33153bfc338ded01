//! A hostile node of the hosts' DHT: it speaks the DHT's protocol (KRPC, bencoded over UDP)
//! well enough to be joined through and asked, and answers every look-up of one identity's
//! record with a forgery: that record as the real nodes hold it, pointing at an address of
//! the forger's, with a higher sequence number, and a signature the identity never made.
//! Its node id is next to the record's target, so every look-up of it asks the forger.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bencode {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Bencode>),
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bencode::List(items) => {
                out.push(b'l');
                items.iter().for_each(|i| i.encode(out));
                out.push(b'e');
            }
            Bencode::Dict(map) => {
                out.push(b'd');
                for (k, v) in map {
                    Bencode::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    pub fn decode(input: &[u8]) -> anyhow::Result<Bencode> {
        let (value, rest) = Self::decode_one(input)?;
        if !rest.is_empty() {
            bail!("trailing bytes");
        }
        Ok(value)
    }

    fn decode_one(input: &[u8]) -> anyhow::Result<(Bencode, &[u8])> {
        match input.first() {
            Some(b'i') => {
                let end = input.iter().position(|&c| c == b'e').context("int")?;
                let n = std::str::from_utf8(&input[1..end])?.parse()?;
                Ok((Bencode::Int(n), &input[end + 1..]))
            }
            Some(b'l') => {
                let mut rest = &input[1..];
                let mut items = Vec::new();
                while rest.first() != Some(&b'e') {
                    let (item, r) = Self::decode_one(rest)?;
                    items.push(item);
                    rest = r;
                }
                Ok((Bencode::List(items), &rest[1..]))
            }
            Some(b'd') => {
                let mut rest = &input[1..];
                let mut map = BTreeMap::new();
                while rest.first() != Some(&b'e') {
                    let (key, r) = Self::decode_one(rest)?;
                    let Bencode::Bytes(key) = key else {
                        bail!("a dict key is not bytes");
                    };
                    let (value, r) = Self::decode_one(r)?;
                    map.insert(key, value);
                    rest = r;
                }
                Ok((Bencode::Dict(map), &rest[1..]))
            }
            Some(c) if c.is_ascii_digit() => {
                let colon = input.iter().position(|&c| c == b':').context("bytes")?;
                let len: usize = std::str::from_utf8(&input[..colon])?.parse()?;
                let start = colon + 1;
                let bytes = input.get(start..start + len).context("short bytes")?;
                Ok((Bencode::Bytes(bytes.to_vec()), &input[start + len..]))
            }
            _ => bail!("not bencode"),
        }
    }

    fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(map) => map.get(key.as_bytes()),
            _ => None,
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Bencode::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

fn dict(entries: Vec<(&str, Bencode)>) -> Bencode {
    Bencode::Dict(
        entries
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

fn bytes(b: &[u8]) -> Bencode {
    Bencode::Bytes(b.to_vec())
}

/// A real node of the DHT, as the forger hands it on.
#[derive(Debug, Clone, Copy)]
struct Known {
    id: [u8; 20],
    addr: SocketAddrV4,
}

pub struct DhtForger {
    pub addr: SocketAddrV4,
    /// How many forged records it has handed out.
    forged: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DhtForger {
    /// Starts on `ip`, learns the ids of `nodes` (real DHT nodes) and `victim`'s record (the
    /// identity key) from them, and from then on answers look-ups of that record with a copy
    /// whose host address `real_address` is replaced by `forged_address` (the same length).
    pub fn start(
        ip: &str,
        nodes: &[SocketAddr],
        victim: &[u8; 32],
        real_address: &str,
        forged_address: &str,
    ) -> anyhow::Result<DhtForger> {
        if real_address.len() != forged_address.len() {
            bail!("the forged address must be as long as the real one");
        }
        let socket = UdpSocket::bind(format!("{ip}:0"))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let addr = match socket.local_addr()? {
            SocketAddr::V4(v4) => v4,
            other => bail!("not IPv4: {other}"),
        };
        let target: [u8; 20] =
            *mainline::MutableItem::target_from_key(victim, Some(smvs_crypto::DHT_RECORD_SALT))
                .as_bytes();
        // The closest id there can be without being the target.
        let mut id = target;
        id[19] ^= 1;
        let mut known = Vec::new();
        let mut real = None;
        for node in nodes {
            let SocketAddr::V4(node) = node else { continue };
            let ask = dict(vec![
                // mainline's transaction ids are four bytes.
                ("t", bytes(b"forg")),
                ("y", bytes(b"q")),
                ("q", bytes(b"get")),
                (
                    "a",
                    dict(vec![("id", bytes(&id)), ("target", bytes(&target))]),
                ),
            ]);
            let Some(answer) = exchange(&socket, *node, &ask) else {
                continue;
            };
            let Some(r) = answer.get("r") else { continue };
            if let Some(node_id) = r.get("id").and_then(Bencode::bytes) {
                if let Ok(node_id) = <[u8; 20]>::try_from(node_id) {
                    known.push(Known {
                        id: node_id,
                        addr: *node,
                    });
                }
            }
            if let (Some(v), Some(Bencode::Int(seq))) =
                (r.get("v").and_then(Bencode::bytes), r.get("seq"))
            {
                real.get_or_insert((v.to_vec(), *seq));
            }
        }
        let (value, seq) = real.ok_or_else(|| anyhow!("no node holds the victim's record"))?;
        let forged_value = replace_once(&value, real_address.as_bytes(), forged_address.as_bytes())
            .ok_or_else(|| anyhow!("the record does not hold {real_address}"))?;
        let forged = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (forged, stop) = (forged.clone(), stop.clone());
            let victim = *victim;
            std::thread::spawn(move || {
                serve(
                    socket,
                    id,
                    target,
                    known,
                    victim,
                    forged_value,
                    seq + 1000,
                    &forged,
                    &stop,
                )
            })
        };
        Ok(DhtForger {
            addr,
            forged,
            stop,
            thread: Some(thread),
        })
    }

    pub fn forged_answers(&self) -> usize {
        self.forged.load(Ordering::SeqCst)
    }
}

impl Drop for DhtForger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn replace_once(haystack: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    let at = haystack.windows(from.len()).position(|w| w == from)?;
    let mut out = haystack.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    Some(out)
}

/// Sends `query` and waits briefly for the answer with the same transaction id.
fn exchange(socket: &UdpSocket, to: SocketAddrV4, query: &Bencode) -> Option<Bencode> {
    let mut out = Vec::new();
    query.encode(&mut out);
    socket.send_to(&out, to).ok()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if from != SocketAddr::V4(to) {
            continue;
        }
        if let Ok(answer) = Bencode::decode(&buf[..n]) {
            if answer.get("t") == query.get("t") {
                return Some(answer);
            }
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn serve(
    socket: UdpSocket,
    id: [u8; 20],
    target: [u8; 20],
    known: Vec<Known>,
    victim: [u8; 32],
    forged_value: Vec<u8>,
    forged_seq: i64,
    forged: &AtomicUsize,
    stop: &AtomicBool,
) {
    let mut compact = Vec::new();
    for k in &known {
        compact.extend_from_slice(&k.id);
        compact.extend_from_slice(&k.addr.ip().octets());
        compact.extend_from_slice(&k.addr.port().to_be_bytes());
    }
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Bencode::decode(&buf[..n]) else {
            continue;
        };
        if query.get("y").and_then(Bencode::bytes) != Some(b"q") {
            continue;
        }
        let Some(t) = query.get("t").cloned() else {
            continue;
        };
        let method = query.get("q").and_then(Bencode::bytes).unwrap_or_default();
        let asked = query
            .get("a")
            .and_then(|a| a.get("target"))
            .and_then(Bencode::bytes);
        let mut r = vec![("id", bytes(&id))];
        match method {
            b"find_node" => r.push(("nodes", bytes(&compact))),
            b"get_peers" => {
                r.push(("nodes", bytes(&compact)));
                r.push(("token", bytes(b"forger")));
            }
            b"get" => {
                r.push(("nodes", bytes(&compact)));
                r.push(("token", bytes(b"forger")));
                if asked == Some(&target[..]) {
                    r.push(("k", bytes(&victim)));
                    r.push(("seq", Bencode::Int(forged_seq)));
                    // Not the identity's: no one but its keyguard can make that.
                    r.push(("sig", bytes(&[0x5a; 64])));
                    r.push(("v", bytes(&forged_value)));
                    forged.fetch_add(1, Ordering::SeqCst);
                }
            }
            _ => {}
        }
        let answer = dict(vec![("t", t), ("y", bytes(b"r")), ("r", dict(r))]);
        let mut out = Vec::new();
        answer.encode(&mut out);
        let _ = socket.send_to(&out, from);
    }
}
