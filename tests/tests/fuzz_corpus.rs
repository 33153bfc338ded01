//! The seed corpora of the fuzz targets in `fuzz/`, made from real traffic: a real Noise first
//! message, a real sealed envelope, a real signed directory record and registration, real
//! keyguard and local-API requests, sealed media packets and consent hellos, call-port frames
//! (and a third-party STUN client's request, RFC 5769's), each made by the code that makes
//! them in the daemons, under the fuzz targets' fixed keys.
//!
//! With `SMVS_WRITE_FUZZ_CORPUS=1` the test (re)writes `fuzz/corpus/<target>/`. Either way it
//! then reads every committed seed back through the code its target drives and checks that it
//! is still accepted, so a wire change that leaves the seeds behind fails here rather than
//! silently weakening the fuzzing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::fs;
use std::path::{Path, PathBuf};

use smvs_crypto::noise::Handshake;
use smvs_crypto::{AgreementKeyPair, SignContext};
use smvs_directory::fuzzing::{check_registration, check_rotation_keys};
use smvs_directory::record::{sign_record, verify_record};
use smvs_directory::{ErrorCode, UserRecord};
use smvs_keyguard::fuzzing::{answer, Method};
use smvs_media::wire::{self, Hello, Stream, CHALLENGE_LEN};
use smvs_schema::canonical::{self, RegistrationFields};
use smvs_schema::common_capnp::signed_record;
use smvs_schema::directory_capnp::{directory, session as directory_session};
use smvs_schema::host_capnp::host_link;
use smvs_schema::keyguard_capnp::{self, keyguard};
use smvs_schema::local_capnp::host;
use smvs_schema::{CallId, HostAddress, MessageId, Username};
use smvs_transport::callport::{Frame, ALLOC_ID_LEN, BIND_NONCE_LEN, BIND_PROOF_LEN};
use smvsd::model::{CallSignal, Media, Payload, SignalKind};
use smvsd::session::{self, Content, Header, Inner, SessionKeys};

#[path = "../../fuzz/src/keys.rs"]
mod keys;

type Seeds = Vec<(&'static str, &'static str, Vec<u8>)>;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

fn words(message: &capnp::message::Builder<capnp::message::HeapAllocator>) -> Vec<u8> {
    capnp::serialize::write_message_to_words(message)
}

fn read(bytes: &[u8]) -> capnp::message::Reader<capnp::serialize::OwnedSegments> {
    let mut slice = bytes;
    capnp::serialize::read_message(&mut slice, smvs_schema::reader_options()).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A finished in-memory handshake between the fuzzers' two transport keys.
fn link() -> (
    smvs_crypto::noise::NoiseSender,
    smvs_crypto::noise::NoiseReceiver,
) {
    let prologue = smvs_transport::HOST_PROLOGUE;
    let mut a = Handshake::initiator(&keys::peer_transport_key(), prologue).unwrap();
    let mut b = Handshake::responder(&keys::host_transport_key(), prologue).unwrap();
    while !(a.is_finished() && b.is_finished()) {
        let (from, to) = if a.is_my_turn() {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let message = from.write_message().unwrap();
        to.read_message(&message).unwrap();
    }
    let (_, sender, _) = a.into_transport().unwrap();
    let (_, _, receiver) = b.into_transport().unwrap();
    (sender, receiver)
}

fn inners() -> Vec<(&'static str, Inner)> {
    let base = |content| Inner {
        id: MessageId([7; 16]),
        from: name("alice"),
        to: name("bob"),
        time: 1_700_000_000_000,
        prev_hash: vec![9; 32],
        content,
        log_heads: Vec::new(),
    };
    let media = Media::parse(&[5; 32], "127.0.0.1:40000", true, true)
        .unwrap()
        .with_kem(SignalKind::Offer, &[6; smvs_crypto::XWING_PUBLIC_KEY_LEN])
        .unwrap();
    vec![
        (
            "text",
            base(Content::Message(Payload::Text("hello bob".into()))),
        ),
        (
            "delete",
            base(Content::Message(Payload::Delete(vec![MessageId([1; 16])]))),
        ),
        ("expire", base(Content::Message(Payload::Expire(3600)))),
        (
            "call-offer",
            base(Content::Call(CallSignal {
                call_id: CallId::from_slice(&[3; 16]).unwrap(),
                kind: SignalKind::Offer,
                media: Some(media),
            })),
        ),
        (
            "call-hangup",
            base(Content::Call(CallSignal {
                call_id: CallId::from_slice(&[3; 16]).unwrap(),
                kind: SignalKind::Hangup,
                media: None,
            })),
        ),
    ]
}

/// `deliver` parameters carrying `inner` sealed as alice's host seals it for bob.
fn deliver(inner: &Inner) -> Vec<u8> {
    let mut message = capnp::message::Builder::new_default();
    fill_envelope(
        message
            .init_root::<host_link::deliver_params::Builder<'_>>()
            .init_envelope(),
        inner,
    );
    words(&message)
}

fn deliver_batch(inners: &[&Inner]) -> Vec<u8> {
    let mut message = capnp::message::Builder::new_default();
    let mut list = message
        .init_root::<host_link::deliver_batch_params::Builder<'_>>()
        .init_envelopes(u32::try_from(inners.len()).unwrap());
    for (i, inner) in (0u32..).zip(inners) {
        fill_envelope(list.reborrow().get(i), inner);
    }
    words(&message)
}

/// `inner` sealed under the fuzz targets' contact key, as a session v1 envelope.
fn fill_envelope(mut e: smvs_schema::host_capnp::envelope::Builder<'_>, inner: &Inner) {
    let keys = SessionKeys::from_shared(&keys::session_key()).unwrap();
    let header = Header {
        id: &inner.id,
        sender: &inner.from,
        recipient: &inner.to,
    };
    let sealed = session::seal(&keys, &header, &session::encode_inner(inner)).unwrap();
    e.set_format_version(session::ENVELOPE_FORMAT);
    e.set_id(&inner.id.0);
    e.set_sender(inner.from.as_str());
    e.set_recipient(inner.to.as_str());
    e.set_session_version(session::SESSION_V1);
    e.set_sealed(&sealed);
}

/// A fixed expiry far ahead (2100-01-01), for seeds that must stay valid: a record a host
/// checks today. (A registration's certificate cannot be: the directory refuses one longer than
/// 30 days, so that seed's expires with its timestamp, and its check allows that.)
const FAR_NOT_AFTER: i64 = 4_102_444_800_000;

/// Alice's identity (the fuzzers' fixed one) and her transport key, certified until
/// `not_after`.
fn alice_record(not_after: i64) -> UserRecord {
    let identity = keys::identity();
    let transport_key = keys::peer_transport_key().public();
    let username = name("alice");
    let transport_certificate = identity.signing.sign(
        SignContext::TransportCertificate,
        &canonical::transport_certificate(&username, &transport_key, not_after),
    );
    UserRecord {
        username,
        identity: identity.bundle(),
        transport_key,
        transport_certificate,
        transport_not_after: not_after,
        host_address: HostAddress::parse("127.0.0.1:7421").unwrap(),
        serial: 3,
        session_keys: None,
    }
}

fn seeds() -> Seeds {
    let mut seeds: Seeds = Vec::new();

    // A connecting host's first handshake message, framed.
    let mut hs =
        Handshake::initiator(&keys::peer_transport_key(), smvs_transport::HOST_PROLOGUE).unwrap();
    let first = hs.write_message().unwrap();
    let mut framed = u16::try_from(first.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&first);
    seeds.push(("noise_handshake", "first-message", framed));

    // Frames script: one sealed deliver call, then two small sealed chunks.
    let inners = inners();
    let text = &inners[0].1;
    let mut script = Vec::new();
    for chunk in deliver(text).chunks(200).take(3) {
        script.extend_from_slice(&[1, u8::try_from(chunk.len()).unwrap()]);
        script.extend_from_slice(chunk);
    }
    seeds.push(("noise_frames", "sealed-frames", script));

    for (kind, inner) in inners.iter().map(|(k, i)| (*k, i)) {
        seeds.push(("host_deliver", kind, deliver(inner)));
        seeds.push(("session_inner", kind, session::encode_inner(inner).to_vec()));
    }
    // Every kind of inner message in one batch, as a sender with a backlog sends them.
    let all: Vec<&Inner> = inners.iter().map(|(_, i)| i).collect();
    seeds.push(("host_deliver_batch", "backlog", deliver_batch(&all)));

    // A signed record as the directory answers a lookup, and its record bytes alone.
    let directory_key = keys::directory_key();
    let mut message = capnp::message::Builder::new_default();
    sign_record(
        &directory_key,
        &alice_record(FAR_NOT_AFTER),
        1_700_000_000_000,
        message.init_root::<signed_record::Builder<'_>>(),
    );
    let signed = words(&message);
    let record = {
        let reader = read(&signed);
        let r = reader.get_root::<signed_record::Reader<'_>>().unwrap();
        r.get_record().unwrap().to_vec()
    };
    seeds.push(("directory_record", "signed", [&[0][..], &signed].concat()));
    seeds.push(("directory_record", "record", [&[1][..], &record].concat()));

    // A registration as a host sends it, and a rotation to the same keys.
    let timestamp = smvs_directory::clock::now_ms();
    let user = alice_record(timestamp + canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS);
    let fields = RegistrationFields {
        directory_key: &directory_key.public(),
        username: &user.username,
        identity: &user.identity,
        transport_key: &user.transport_key,
        transport_certificate: user.transport_certificate.as_bytes(),
        transport_not_after: user.transport_not_after,
        host_address: Some(&user.host_address),
        timestamp,
    };
    let identity = keys::identity();
    let signature = identity
        .signing
        .sign(SignContext::DirectoryRegistration, &fields.to_bytes());
    let mut message = capnp::message::Builder::new_default();
    {
        let mut r = message
            .init_root::<directory::register_params::Builder<'_>>()
            .init_request();
        r.set_username(user.username.as_str());
        let mut id = r.reborrow().init_identity();
        id.set_signing_key(user.identity.signing_key.as_bytes());
        id.set_agreement_key(user.identity.agreement_key.as_bytes());
        id.set_agreement_signature(user.identity.agreement_signature.as_bytes());
        let mut t = r.reborrow().init_transport();
        t.set_key(user.transport_key.as_bytes());
        t.set_certificate(user.transport_certificate.as_bytes());
        t.set_not_after(user.transport_not_after);
        r.set_host_address(user.host_address.as_str());
        r.set_timestamp(timestamp);
        r.set_signature(signature.as_bytes());
    }
    seeds.push((
        "directory_request",
        "register",
        [&[0][..], &words(&message)].concat(),
    ));
    let mut message = capnp::message::Builder::new_default();
    {
        let mut r = message
            .init_root::<directory_session::rotate_keys_params::Builder<'_>>()
            .init_request();
        let mut id = r.reborrow().init_identity();
        id.set_signing_key(user.identity.signing_key.as_bytes());
        id.set_agreement_key(user.identity.agreement_key.as_bytes());
        id.set_agreement_signature(user.identity.agreement_signature.as_bytes());
        let mut t = r.reborrow().init_transport();
        t.set_key(user.transport_key.as_bytes());
        t.set_certificate(user.transport_certificate.as_bytes());
        t.set_not_after(user.transport_not_after);
        r.set_timestamp(timestamp);
        r.set_signature(&[0; 64]);
    }
    seeds.push((
        "directory_request",
        "rotate",
        [&[1][..], &words(&message)].concat(),
    ));

    // Keyguard: what smvsd asks in a session v2 handshake, opens a directory login token,
    // derives a contact key, renews its transport certificate and registers.
    let mut message = capnp::message::Builder::new_default();
    {
        let mut p = message.init_root::<keyguard::handshake_secret_params::Builder<'_>>();
        p.set_operation(keyguard_capnp::GuardOperation::IdentityDh);
        p.set_component(keyguard_capnp::HandshakeComponent::ResponderIdentityDh);
        p.set_transcript(&[3; 32]);
        p.set_peer(AgreementKeyPair::generate().unwrap().public().as_bytes());
    }
    seeds.push((
        "keyguard_request",
        "handshake-secret",
        [&[0][..], &words(&message)].concat(),
    ));
    // The directory's challenge, as it seals it (with an expiry far ahead, so the seed stays
    // an accepted token).
    let plaintext = canonical::auth_token_plaintext(
        &directory_key.public(),
        &name("alice"),
        FAR_NOT_AFTER,
        &[8; 32],
    );
    let token = smvs_crypto::seal(&identity.agreement.public(), &plaintext).unwrap();
    let mut message = capnp::message::Builder::new_default();
    {
        let mut p = message.init_root::<keyguard::open_login_token_params::Builder<'_>>();
        p.set_directory_key(directory_key.public().as_bytes());
        p.set_username("alice");
        p.set_sealed_token(&token);
    }
    seeds.push((
        "keyguard_request",
        "open-login-token",
        [&[1][..], &words(&message)].concat(),
    ));
    let mut message = capnp::message::Builder::new_default();
    {
        let mut p = message.init_root::<keyguard::certify_transport_params::Builder<'_>>();
        p.set_username("alice");
        p.set_transport_key(user.transport_key.as_bytes());
    }
    seeds.push((
        "keyguard_request",
        "certify-transport",
        [&[3][..], &words(&message)].concat(),
    ));
    let mut message = capnp::message::Builder::new_default();
    {
        let mut p = message.init_root::<keyguard::sign_registration_params::Builder<'_>>();
        p.set_directory_key(directory_key.public().as_bytes());
        p.set_username("alice");
        p.set_transport_key(user.transport_key.as_bytes());
        p.set_host_address("127.0.0.1:7421");
    }
    seeds.push((
        "keyguard_request",
        "sign-registration",
        [&[4][..], &words(&message)].concat(),
    ));
    let bob = AgreementKeyPair::from_secret_bytes(&[0x77; 32]).unwrap();
    let mut message = capnp::message::Builder::new_default();
    {
        let mut p = message.init_root::<keyguard::derive_shared_key_params::Builder<'_>>();
        p.set_peer_agreement_key(bob.public().as_bytes());
        p.set_salt(&[1; 64]);
        p.set_info(session::AGREEMENT_INFO);
    }
    seeds.push((
        "keyguard_request",
        "derive",
        [&[2][..], &words(&message)].concat(),
    ));

    // The local API, as smvsctl calls it.
    let mut local =
        |method: u8,
         what: &'static str,
         build: &dyn Fn(&mut capnp::message::Builder<capnp::message::HeapAllocator>)| {
            let mut message = capnp::message::Builder::new_default();
            build(&mut message);
            seeds.push((
                "local_request",
                what,
                [&[method][..], &words(&message)].concat(),
            ));
        };
    local(0, "register", &|m| {
        m.init_root::<host::register_params::Builder<'_>>()
            .set_username("alice");
    });
    local(1, "send", &|m| {
        let mut p = m.init_root::<host::send_params::Builder<'_>>();
        p.set_to("bob");
        p.set_body("hello bob");
    });
    local(2, "history", &|m| {
        let mut p = m.init_root::<host::history_params::Builder<'_>>();
        p.set_peer("bob");
        p.set_limit(50);
    });
    local(6, "delete", &|m| {
        let mut p = m.init_root::<host::delete_params::Builder<'_>>();
        p.set_peer("bob");
        p.set_id(&[7; 16]);
        p.set_everywhere(true);
    });
    local(9, "place-call", &|m| {
        let mut p = m.init_root::<host::place_call_params::Builder<'_>>();
        p.set_peer("bob");
        let mut media = p.init_media();
        media.set_public_key(&[5; 32]);
        media.set_kem(&[6; smvs_crypto::XWING_PUBLIC_KEY_LEN]);
        media.set_address("127.0.0.1:40000");
        media.set_video(true);
        media.set_audio(true);
    });

    // Media: a sealed RTP packet, a sealed RTCP report and a sealed hello.
    let key = keys::media_key();
    let rtp = [
        &[0x80, 0x60, 0, 1, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78][..],
        &[0xAA; 40],
    ]
    .concat();
    let hello = Hello {
        seeking: true,
        challenge: [0x5A; CHALLENGE_LEN],
        echo: Some([0xA5; CHALLENGE_LEN]),
    }
    .encode();
    for (what, seq, stream, packet) in [
        ("rtp", 1, Stream::VideoRtp, &rtp[..]),
        (
            "rtcp",
            2,
            Stream::AudioRtcp,
            &[0x81, 0xC9, 0, 1, 0, 0, 0, 1][..],
        ),
        ("hello", 3, Stream::Hello, &hello[..]),
    ] {
        let datagram = wire::seal(Some(&key), seq, stream, packet).unwrap();
        seeds.push(("media_datagram", what, [&[0][..], &datagram].concat()));
    }
    let mut script = Vec::new();
    for ms in [0u8, 2, 40] {
        script.extend_from_slice(&[ms, u8::try_from(hello.len()).unwrap()]);
        script.extend_from_slice(&hello);
    }
    seeds.push(("media_hello", "three-hellos", script));

    // The call port: scripts of `[from][len][datagram]` (`from % 3`: 0 the device, 1 the peer
    // relay, 2 a stranger; with bit 2 (4) set the target puts in the real allocation id, and
    // completes a `Bind` with the nonce it would challenge that source with and the proof under
    // the real token: 6 is the device so, 4 the peer relay, 5 a stranger).
    let (device, peer, stranger) = (6, 4, 5);
    let step = |script: &mut Vec<u8>, from: u8, frame: &[u8]| {
        script.extend_from_slice(&[from, u8::try_from(frame.len()).unwrap()]);
        script.extend_from_slice(frame);
    };
    let encode = |frame: Frame<'_>| {
        let mut out = Vec::new();
        frame.try_encode(&mut out).unwrap();
        out
    };
    let mut script = Vec::new();
    step(
        &mut script,
        2,
        &encode(Frame::BindingRequest {
            transaction: [0x11; 12],
        }),
    );
    // RFC 5769 §2.1: an ICE agent's request, with SOFTWARE, PRIORITY, ICE-CONTROLLED,
    // USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
    step(
        &mut script,
        0,
        &hex::decode(concat!(
            "000100582112a442b7e7a701bc34d686fa87dfae",
            "802200105354554e20746573742063",
            "6c69656e74002400046e0001ff80290008932ff9b151263b36",
            "000600096576746a3a68367659202020",
            "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2",
            "80280004e57a3bcf"
        ))
        .unwrap(),
    );
    seeds.push(("callport_frame", "stun", script));
    let sealed = wire::seal(Some(&key), 4, Stream::VideoRtp, &rtp).unwrap();
    let bind_request = encode(Frame::BindRequest {
        alloc: [0; ALLOC_ID_LEN],
    });
    let bind = encode(Frame::Bind {
        alloc: [0; ALLOC_ID_LEN],
        nonce: [0; BIND_NONCE_LEN],
        proof: [0; BIND_PROOF_LEN],
    });
    let data = encode(Frame::Data {
        alloc: [0; ALLOC_ID_LEN],
        payload: &sealed,
    });
    let forward = encode(Frame::Forward {
        alloc: [0; ALLOC_ID_LEN],
        payload: &sealed,
    });
    let mut script = Vec::new();
    // The device binds, sends media out and gets media in...
    step(&mut script, device, &bind_request);
    step(&mut script, device, &bind);
    step(&mut script, device, &data);
    step(&mut script, peer, &forward);
    // ... and moves (a NAT rebinding), and the media follows it.
    step(&mut script, stranger, &bind_request);
    step(&mut script, stranger, &bind);
    step(&mut script, peer, &forward);
    seeds.push(("callport_frame", "relay", script));
    seeds
}

/// Whether a seed of `target` is still accepted by what the target drives; the reason if not.
fn check(target: &str, bytes: &[u8]) -> Result<(), String> {
    let (first, rest) = bytes.split_first().ok_or("empty seed")?;
    match target {
        "noise_handshake" => {
            let mut hs =
                Handshake::responder(&keys::host_transport_key(), smvs_transport::HOST_PROLOGUE)
                    .map_err(|e| e.to_string())?;
            let len = usize::from(u16::from_be_bytes([*first, rest[0]]));
            hs.read_message(&rest[1..1 + len])
                .map_err(|e| e.to_string())
        }
        "noise_frames" => {
            let (mut sender, receiver) = link();
            let (mut wire, mut plain) = (Vec::new(), Vec::new());
            let mut script = bytes;
            while let [_, len, tail @ ..] = script {
                let (chunk, tail) = tail.split_at(usize::from(*len));
                script = tail;
                let mut frame = Vec::new();
                sender
                    .encrypt(chunk, &mut frame)
                    .map_err(|e| e.to_string())?;
                wire.extend_from_slice(&u16::try_from(frame.len()).unwrap().to_be_bytes());
                wire.extend_from_slice(&frame);
                plain.extend_from_slice(chunk);
            }
            let got = runtime().block_on(smvs_transport::fuzzing::read_frames(receiver, &wire));
            (got == plain)
                .then_some(())
                .ok_or("frames did not decrypt".into())
        }
        "host_deliver" => {
            let message = read(bytes);
            let params = message
                .get_root::<host_link::deliver_params::Reader<'_>>()
                .map_err(|e| e.to_string())?;
            open_seed(&smvsd::api::peer::envelope_data(params).map_err(|e| format!("{e:?}"))?)
        }
        "host_deliver_batch" => {
            let message = read(bytes);
            let params = message
                .get_root::<host_link::deliver_batch_params::Reader<'_>>()
                .map_err(|e| e.to_string())?;
            let envelopes =
                smvsd::api::peer::batch_envelope_data(params).map_err(|e| e.to_string())?;
            if envelopes.len() < 2 {
                return Err("a batch of fewer than two".into());
            }
            for env in envelopes {
                open_seed(&env.map_err(|e| format!("{e:?}"))?)?;
            }
            Ok(())
        }
        "session_inner" => session::decode_inner(bytes)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "directory_record" => {
            let key = keys::directory_key();
            let mut message = capnp::message::Builder::new_default();
            let signed_bytes = if *first == 0 {
                rest.to_vec()
            } else {
                let mut s = message.init_root::<signed_record::Builder<'_>>();
                s.set_record(rest);
                s.set_signature(key.sign(SignContext::DirectoryRecord, rest).as_bytes());
                words(&message)
            };
            let reader = read(&signed_bytes);
            let signed = reader
                .get_root::<signed_record::Reader<'_>>()
                .map_err(|e| e.to_string())?;
            verify_record(signed, &key.public(), Some(&name("alice"))).map(|_| ())
        }
        "directory_request" => {
            let message = read(rest);
            let result = if *first == 0 {
                let params = message
                    .get_root::<directory::register_params::Reader<'_>>()
                    .map_err(|e| e.to_string())?;
                let request = params.get_request().map_err(|e| e.to_string())?;
                check_registration(&keys::directory_key().public(), request).map(|_| ())
            } else {
                let params = message
                    .get_root::<directory_session::rotate_keys_params::Reader<'_>>()
                    .map_err(|e| e.to_string())?;
                let request = params.get_request().map_err(|e| e.to_string())?;
                check_rotation_keys(&name("alice"), request)
            };
            match result {
                // A committed registration's timestamp ages: everything before that check passed.
                Err(refusal) if refusal.code != ErrorCode::Stale => Err(refusal.to_string()),
                _ => Ok(()),
            }
        }
        "keyguard_request" => {
            let method = [
                Method::HandshakeSecret,
                Method::OpenLoginToken,
                Method::DeriveSharedKey,
                Method::CertifyTransport,
                Method::SignRegistration,
            ][usize::from(*first % 5)];
            answer(&keys::identity(), method, rest)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        "local_request" => {
            let message = read(rest);
            let user = match first % 12 {
                0 => message
                    .get_root::<host::register_params::Reader<'_>>()
                    .and_then(|p| p.get_username()),
                1 => message
                    .get_root::<host::send_params::Reader<'_>>()
                    .and_then(|p| p.get_to()),
                2 => message
                    .get_root::<host::history_params::Reader<'_>>()
                    .and_then(|p| p.get_peer()),
                6 => message
                    .get_root::<host::delete_params::Reader<'_>>()
                    .and_then(|p| p.get_peer()),
                9 => {
                    let p = message
                        .get_root::<host::place_call_params::Reader<'_>>()
                        .map_err(|e| e.to_string())?;
                    let m = p.get_media().map_err(|e| e.to_string())?;
                    let address = m.get_address().map_err(|e| e.to_string())?;
                    Media::parse(
                        m.get_public_key().map_err(|e| e.to_string())?,
                        address.to_str().map_err(|e| e.to_string())?,
                        m.get_video(),
                        m.get_audio(),
                    )?
                    .with_kem(SignalKind::Offer, m.get_kem().map_err(|e| e.to_string())?)?;
                    p.get_peer()
                }
                other => return Err(format!("no seed check for method {other}")),
            }
            .map_err(|e| e.to_string())?;
            let user = user.to_str().map_err(|e| e.to_string())?;
            smvsd::commands::parse_user(user)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        "media_datagram" => {
            let opened = wire::open(Some(&keys::media_key()), rest).map_err(|e| e.to_string())?;
            if opened.stream == Stream::Hello {
                Hello::decode(&opened.packet).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        "media_hello" => {
            let mut script = bytes;
            while let [_, len, tail @ ..] = script {
                let (packet, tail) = tail.split_at(usize::from(*len));
                script = tail;
                Hello::decode(packet).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        "callport_frame" => {
            let mut script = bytes;
            while let [from, len, tail @ ..] = script {
                let (datagram, tail) = tail.split_at(usize::from(*len));
                script = tail;
                let frame = Frame::decode(datagram).map_err(|e| e.to_string())?;
                // No seed can hold a nonce the port would take (its secret is made at start):
                // a Bind reaches the bound paths only when the target completes it.
                if matches!(frame, Frame::Bind { .. }) && from & 4 == 0 {
                    return Err("a Bind step without bit 2 of `from` is always refused".into());
                }
            }
            Ok(())
        }
        other => Err(format!("no seed check for target {other}")),
    }
}

/// A host-link seed's envelope must open under the targets' contact key and decode.
fn open_seed(env: &smvsd::inbox::EnvelopeData) -> Result<(), String> {
    let (sender, recipient) = (name(&env.sender), name(&env.recipient));
    let id = MessageId::from_slice(&env.id).ok_or("bad id")?;
    let header = Header {
        id: &id,
        sender: &sender,
        recipient: &recipient,
    };
    let keys = SessionKeys::from_shared(&keys::session_key()).unwrap();
    let content = session::open(&keys, &header, &env.sealed).map_err(|e| e.to_string())?;
    session::decode_inner(&content)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn fuzz_seeds_are_real_traffic_and_still_parse() {
    let dir = corpus_dir();
    if std::env::var_os("SMVS_WRITE_FUZZ_CORPUS").is_some_and(|v| v == "1") {
        for (target, what, bytes) in seeds() {
            let target_dir = dir.join(target);
            fs::create_dir_all(&target_dir).unwrap();
            fs::write(target_dir.join(what), bytes).unwrap();
        }
    }
    // Freshly made seeds must pass too (so a broken generator shows here, not in the corpus).
    for (target, what, bytes) in seeds() {
        check(target, &bytes).unwrap_or_else(|e| panic!("new seed {target}/{what}: {e}"));
    }
    let targets: Vec<_> = fs::read_dir(fuzz_targets_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    assert!(!targets.is_empty());
    for target in targets {
        let seeds: Vec<_> = fs::read_dir(dir.join(&target))
            .unwrap_or_else(|e| panic!("fuzz target {target} has no corpus: {e}"))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(
            !seeds.is_empty(),
            "fuzz target {target} has an empty corpus"
        );
        for seed in seeds {
            let bytes = fs::read(&seed).unwrap();
            check(&target, &bytes).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        }
    }
}

fn fuzz_targets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets")
}
