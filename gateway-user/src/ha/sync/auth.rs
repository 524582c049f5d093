//! The sync channel's authentication: a challenge-response when a connection opens, then an
//! HMAC-SHA256 on every frame.
//!
//! At connect, the standby (it listens) sends a fresh random nonce; the active answers with
//! its own nonce and a MAC over both, which only a holder of the shared key can compute;
//! the standby answers with its MAC over both in the other order, so the active knows it
//! streams its state to the real peer. Every frame after that carries its sequence number
//! (one per direction, from zero) and a MAC over the direction, both nonces, the sequence
//! number and the payload: a frame cannot be forged, altered, replayed (within the
//! connection or from an earlier one: other nonces), reordered or moved to the other
//! direction.
//!
//! A frame: payload length (u32, big-endian), sequence number (u64), payload, MAC (32).

use std::io::Read as _;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

type HmacSha256 = Hmac<Sha256>;

/// The first bytes of both hello messages: the protocol and its version.
const MAGIC: &[u8; 8] = b"GWSYNC01";
pub const NONCE_BYTES: usize = 32;
pub const MAC_BYTES: usize = 32;
/// The largest payload a frame may carry: a bound on what one frame makes the receiver
/// allocate before its MAC is checked.
pub const MAX_PAYLOAD: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a gateway state-sync peer (bad greeting)")]
    Greeting,
    #[error("the peer's node id is ours ({0}): both nodes of a pair need their own")]
    SameNode(u8),
    #[error("the peer does not hold our key (its MAC is wrong)")]
    WrongKey,
    #[error("frame {seq}: bad MAC (forged, altered or replayed)")]
    FrameMac { seq: u64 },
    #[error("frame {got} where {expected} was due (replayed or lost)")]
    Sequence { expected: u64, got: u64 },
    #[error("frame of {0} bytes: more than {MAX_PAYLOAD}")]
    TooLong(usize),
}

impl AuthError {
    /// Whether the peer failed to prove it holds the key (a refusal to count), as opposed
    /// to a connection that broke.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, AuthError::Io(_))
    }
}

/// Which side of the connection: labels the MACs so that none is valid the other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The active node, which connects and streams.
    Active,
    /// The standby, which listens and acknowledges.
    Standby,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Active => b"active",
            Side::Standby => b"standby",
        }
    }
}

/// Fresh random bytes from the kernel.
pub fn nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0; NONCE_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    Ok(nonce)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// The MAC one side shows at connect: over both nonces (its own last) and both node ids.
fn hello_mac(key: &[u8], side: Side, theirs: &[u8], ours: &[u8], ids: [u8; 2]) -> HmacSha256 {
    mac(key, &[b"hello", side.label(), theirs, ours, &ids])
}

/// An authenticated connection's keys: what both ends derived at connect.
#[derive(Clone)]
pub struct Session {
    key: Vec<u8>,
    /// The standby's nonce, then the active's.
    nonces: [[u8; NONCE_BYTES]; 2],
    /// The peer's node id.
    pub peer_id: u8,
}

/// The active side of the handshake, on a connection to the standby.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &[u8],
    node_id: u8,
) -> Result<Session, AuthError> {
    let mut greeting = [0; 8 + 1 + NONCE_BYTES];
    stream.read_exact(&mut greeting).await?;
    let (magic, rest) = greeting.split_at(8);
    if magic != MAGIC {
        return Err(AuthError::Greeting);
    }
    let peer_id = rest[0];
    if peer_id == node_id {
        return Err(AuthError::SameNode(node_id));
    }
    let mut theirs = [0; NONCE_BYTES];
    theirs.copy_from_slice(&rest[1..]);
    let ours = nonce()?;
    let proof = hello_mac(key, Side::Active, &theirs, &ours, [peer_id, node_id]);
    let mut hello = Vec::with_capacity(8 + 1 + NONCE_BYTES + MAC_BYTES);
    hello.extend_from_slice(MAGIC);
    hello.push(node_id);
    hello.extend_from_slice(&ours);
    hello.extend_from_slice(&proof.finalize().into_bytes());
    stream.write_all(&hello).await?;
    let mut answer = [0; MAC_BYTES];
    stream.read_exact(&mut answer).await.map_err(|err| {
        // The standby hangs up on a wrong MAC: most likely our key is not its key.
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            AuthError::WrongKey
        } else {
            AuthError::Io(err)
        }
    })?;
    hello_mac(key, Side::Standby, &ours, &theirs, [node_id, peer_id])
        .verify_slice(&answer)
        .map_err(|_| AuthError::WrongKey)?;
    Ok(Session {
        key: key.to_vec(),
        nonces: [theirs, ours],
        peer_id,
    })
}

/// The standby side of the handshake, on a connection the active opened.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &[u8],
    node_id: u8,
) -> Result<Session, AuthError> {
    let ours = nonce()?;
    let mut greeting = Vec::with_capacity(8 + 1 + NONCE_BYTES);
    greeting.extend_from_slice(MAGIC);
    greeting.push(node_id);
    greeting.extend_from_slice(&ours);
    stream.write_all(&greeting).await?;
    let mut hello = [0; 8 + 1 + NONCE_BYTES + MAC_BYTES];
    stream.read_exact(&mut hello).await?;
    let (magic, rest) = hello.split_at(8);
    if magic != MAGIC {
        return Err(AuthError::Greeting);
    }
    let peer_id = rest[0];
    if peer_id == node_id {
        return Err(AuthError::SameNode(node_id));
    }
    let mut theirs = [0; NONCE_BYTES];
    theirs.copy_from_slice(&rest[1..1 + NONCE_BYTES]);
    hello_mac(key, Side::Active, &ours, &theirs, [node_id, peer_id])
        .verify_slice(&rest[1 + NONCE_BYTES..])
        .map_err(|_| AuthError::WrongKey)?;
    let answer = hello_mac(key, Side::Standby, &theirs, &ours, [peer_id, node_id]);
    stream.write_all(&answer.finalize().into_bytes()).await?;
    Ok(Session {
        key: key.to_vec(),
        nonces: [ours, theirs],
        peer_id,
    })
}

impl std::fmt::Debug for Session {
    // Not the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session {{ peer_id: {} }}", self.peer_id)
    }
}

impl Session {
    fn frame_mac(&self, side: Side, seq: u64, payload: &[u8]) -> HmacSha256 {
        let [standby, active] = &self.nonces;
        mac(
            &self.key,
            &[
                b"frame",
                side.label(),
                standby,
                active,
                &seq.to_be_bytes(),
                payload,
            ],
        )
    }

    /// The writer of one direction: `side` is the sender.
    pub fn sealer(&self, side: Side) -> Sealer {
        Sealer {
            session: self.clone(),
            side,
            next: 0,
        }
    }

    /// The reader of one direction: `side` is the sender.
    pub fn opener(&self, side: Side) -> Opener {
        Opener {
            session: self.clone(),
            side,
            next: 0,
        }
    }
}

/// Seals the frames one side sends.
pub struct Sealer {
    session: Session,
    side: Side,
    next: u64,
}

impl Sealer {
    /// The frame's bytes, and its sequence number.
    pub fn seal(&mut self, payload: &[u8]) -> (u64, Vec<u8>) {
        let seq = self.next;
        self.next += 1;
        let mut frame = Vec::with_capacity(12 + payload.len() + MAC_BYTES);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend_from_slice(payload);
        let mac = self.session.frame_mac(self.side, seq, payload);
        frame.extend_from_slice(&mac.finalize().into_bytes());
        (seq, frame)
    }
}

/// Checks the frames one side receives.
pub struct Opener {
    session: Session,
    side: Side,
    next: u64,
}

impl Opener {
    /// Reads the next frame; its payload and sequence number once its MAC and number check.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<(u64, Vec<u8>), AuthError> {
        let mut head = [0; 12];
        reader.read_exact(&mut head).await?;
        let (length, seq) = head.split_at(4);
        let length = u32::from_be_bytes(length.try_into().unwrap_or_default()) as usize;
        let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
        if length > MAX_PAYLOAD {
            return Err(AuthError::TooLong(length));
        }
        let mut body = vec![0; length + MAC_BYTES];
        reader.read_exact(&mut body).await?;
        let (payload, tag) = body.split_at(length);
        self.session
            .frame_mac(self.side, seq, payload)
            .verify_slice(tag)
            .map_err(|_| AuthError::FrameMac { seq })?;
        if seq != self.next {
            return Err(AuthError::Sequence {
                expected: self.next,
                got: seq,
            });
        }
        self.next += 1;
        body.truncate(length);
        Ok((seq, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a shared key of the pair, 32 byt";

    async fn pair(
        active_key: &[u8],
        standby_key: &[u8],
    ) -> (Result<Session, AuthError>, Result<Session, AuthError>) {
        let (mut active, mut standby) = tokio::io::duplex(4096);
        let active_key = active_key.to_vec();
        let standby_key = standby_key.to_vec();
        let standby_side = tokio::spawn(async move {
            let session = accept(&mut standby, &standby_key, 2).await;
            drop(standby);
            session
        });
        let active_side = connect(&mut active, &active_key, 1).await;
        (active_side, standby_side.await.expect("standby task"))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn both_sides_prove_the_key_and_frames_check() {
        runtime().block_on(async {
            let (active, standby) = pair(KEY, KEY).await;
            let (active, standby) = (active.expect("active"), standby.expect("standby"));
            assert_eq!((active.peer_id, standby.peer_id), (2, 1));
            let mut sealer = active.sealer(Side::Active);
            let mut opener = standby.opener(Side::Active);
            let (_, first) = sealer.seal(b"first");
            let (seq, second) = sealer.seal(b"second");
            assert_eq!(seq, 1);
            let mut wire = [first.clone(), second.clone()].concat();
            let mut reader = &wire[..];
            assert_eq!(
                opener.read(&mut reader).await.unwrap(),
                (0, b"first".to_vec())
            );
            assert_eq!(
                opener.read(&mut reader).await.unwrap(),
                (1, b"second".to_vec())
            );
            // Replayed: the MAC is right, the number is not.
            let mut reader = &first[..];
            assert!(matches!(
                opener.read(&mut reader).await,
                Err(AuthError::Sequence {
                    expected: 2,
                    got: 0
                })
            ));
            // Altered payload.
            let mut opener = standby.opener(Side::Active);
            wire[13] ^= 1;
            let mut reader = &wire[..];
            assert!(matches!(
                opener.read(&mut reader).await,
                Err(AuthError::FrameMac { seq: 0 })
            ));
            // The other direction's label.
            let mut opener = standby.opener(Side::Standby);
            let mut reader = &second[..];
            assert!(matches!(
                opener.read(&mut reader).await,
                Err(AuthError::FrameMac { seq: 1 })
            ));
        });
    }

    #[test]
    fn a_peer_with_another_key_is_refused_by_both_sides() {
        runtime().block_on(async {
            let (active, standby) = pair(b"another key entirely, 32 bytes!!", KEY).await;
            assert!(matches!(standby, Err(AuthError::WrongKey)), "{standby:?}");
            assert!(matches!(active, Err(AuthError::WrongKey)), "{active:?}");
            assert!(AuthError::WrongKey.is_refusal());
        });
    }

    #[test]
    fn frames_of_another_connection_do_not_check() {
        runtime().block_on(async {
            let (first, _) = pair(KEY, KEY).await;
            let (_, second) = pair(KEY, KEY).await;
            let (_, frame) = first.expect("first").sealer(Side::Active).seal(b"state");
            let mut opener = second.expect("second").opener(Side::Active);
            let mut reader = &frame[..];
            assert!(matches!(
                opener.read(&mut reader).await,
                Err(AuthError::FrameMac { seq: 0 })
            ));
        });
    }
}
