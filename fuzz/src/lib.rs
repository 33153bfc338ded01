//! What the fuzz targets share: the fixed keys (in `keys.rs`, shared with the seed test) and
//! reading one Cap'n Proto message with the limits every peer-facing SMVS reader uses.

mod keys;

pub use keys::*;

use capnp::message::Reader;
use capnp::serialize::OwnedSegments;

/// One Cap'n Proto message, read as the RPC layer reads a call off a link (into owned,
/// aligned segments; a fuzzer's input after a leading mode byte is not 8-byte aligned, which a
/// flat-slice reader would refuse before looking at it) with the peer-facing limits.
pub fn read_message(bytes: &[u8]) -> Option<Reader<OwnedSegments>> {
    let mut slice = bytes;
    capnp::serialize::read_message(&mut slice, smvs_schema::reader_options()).ok()
}

/// The runtime the async readers (the transport's) run on: one thread, as in the daemons.
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => unreachable!("no tokio runtime: {e}"),
    }
}

thread_local! {
    static CONTACT_KEYS: Option<smvsd::session::SessionKeys> =
        smvsd::session::SessionKeys::from_shared(&session_key()).ok();
}

/// What the host-link targets do with an envelope the peer port read: the header checks the
/// inbox makes before it opens anything, then the session layer's `open` (and, when it opens,
/// `decode_inner`) under the fixed contact key.
pub fn open_envelope(envelope: &smvsd::inbox::EnvelopeData) {
    use smvs_schema::{MessageId, Username};
    let (Ok(sender), Ok(recipient), Some(id)) = (
        Username::parse(&envelope.sender),
        Username::parse(&envelope.recipient),
        MessageId::from_slice(&envelope.id),
    ) else {
        return;
    };
    let header = smvsd::session::Header {
        id: &id,
        sender: &sender,
        recipient: &recipient,
    };
    CONTACT_KEYS.with(|keys| {
        let Some(keys) = keys else { return };
        if let Ok(content) = smvsd::session::open(keys, &header, &envelope.sealed) {
            let _ = smvsd::session::decode_inner(&content);
        }
    });
}
