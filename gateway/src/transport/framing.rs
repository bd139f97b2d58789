//! Stream framing: the length prefixes of an envelope stream, with limits.
//!
//! One bidirectional QUIC stream carries one envelope:
//!
//! ```text
//! sender → receiver:  u64 big-endian length N, then exactly N envelope bytes, then FIN
//! receiver → sender:  u32 big-endian length M (M ≤ 4096), then exactly M receipt bytes, then FIN
//! ```
//!
//! The functions here work on any tokio reader/writer, so they are tested
//! without a network. Every read that waits on the peer is bounded by an
//! inactivity timeout given by the caller.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest delivery receipt accepted or sent (4 KiB).
pub const MAX_RECEIPT_BYTES: usize = 4096;

/// Size of the pieces an envelope body is copied in.
pub const COPY_CHUNK: usize = 64 * 1024;

/// What went wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended inside the length prefix.
    #[error("stream ended inside the {what} length prefix")]
    TruncatedPrefix {
        /// `"envelope"` or `"receipt"`.
        what: &'static str,
    },
    /// The declared length exceeds the limit (nothing was allocated).
    #[error("{what} of {declared} bytes declared, the limit is {max}")]
    TooLarge {
        /// `"envelope"` or `"receipt"`.
        what: &'static str,
        /// Declared length.
        declared: u64,
        /// Limit.
        max: u64,
    },
    /// The stream ended before the declared number of bytes.
    #[error("{what} ended after {got} of {expected} bytes")]
    Truncated {
        /// `"envelope"` or `"receipt"`.
        what: &'static str,
        /// Declared length.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// More bytes followed the declared length.
    #[error("{what} has bytes after its declared length of {expected}")]
    TrailingData {
        /// `"envelope"` or `"receipt"`.
        what: &'static str,
        /// Declared length.
        expected: u64,
    },
    /// No progress for the inactivity timeout.
    #[error("no data for {0:?} while reading a {1}")]
    Timeout(Duration, &'static str),
    /// Reading from the source failed (peer reset, connection lost, …).
    #[error("reading failed: {0}")]
    Read(#[source] io::Error),
    /// Writing to the destination failed.
    #[error("writing failed: {0}")]
    Write(#[source] io::Error),
}

async fn timed<T>(
    idle: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, FrameError> {
    match tokio::time::timeout(idle, fut).await {
        Ok(r) => r.map_err(FrameError::Read),
        Err(_) => Err(FrameError::Timeout(idle, what)),
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    idle: Duration,
    what: &'static str,
) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        let n = timed(idle, what, r.read(&mut buf[got..])).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Writes the envelope length prefix (u64 big-endian).
pub async fn write_envelope_len<W: AsyncWrite + Unpin>(w: &mut W, len: u64) -> Result<(), FrameError> {
    w.write_all(&len.to_be_bytes()).await.map_err(FrameError::Write)
}

/// Reads the envelope length prefix. The caller compares it with its
/// limit: a receiver may answer a too-large envelope without reading it.
pub async fn read_envelope_len<R: AsyncRead + Unpin>(r: &mut R, idle: Duration) -> Result<u64, FrameError> {
    let mut b = [0u8; 8];
    if read_full(r, &mut b, idle, "envelope length").await? != b.len() {
        return Err(FrameError::TruncatedPrefix { what: "envelope" });
    }
    Ok(u64::from_be_bytes(b))
}

/// Copies exactly `len` bytes from `r` to `w` in [`COPY_CHUNK`] pieces
/// (bounded memory), then checks that `r` ends there. Errors on a short
/// or a long source. Each read and write must progress within `idle`.
pub async fn copy_exact<R, W>(r: &mut R, w: &mut W, len: u64, idle: Duration) -> Result<u64, FrameError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_CHUNK.min(usize::try_from(len).unwrap_or(COPY_CHUNK)).max(1)];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done).unwrap_or(usize::MAX).min(buf.len());
        let n = timed(idle, "envelope body", r.read(&mut buf[..want])).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                what: "envelope",
                expected: len,
                got: done,
            });
        }
        match tokio::time::timeout(idle, w.write_all(&buf[..n])).await {
            Ok(r) => r.map_err(FrameError::Write)?,
            Err(_) => return Err(FrameError::Timeout(idle, "envelope body (writing)")),
        }
        done += n as u64;
    }
    let mut probe = [0u8; 1];
    if timed(idle, "envelope end", r.read(&mut probe)).await? != 0 {
        return Err(FrameError::TrailingData {
            what: "envelope",
            expected: len,
        });
    }
    Ok(done)
}

/// Writes a receipt frame: u32 big-endian length, then the bytes.
pub async fn write_receipt<W: AsyncWrite + Unpin>(w: &mut W, receipt: &[u8]) -> Result<(), FrameError> {
    if receipt.len() > MAX_RECEIPT_BYTES {
        return Err(FrameError::TooLarge {
            what: "receipt",
            declared: receipt.len() as u64,
            max: MAX_RECEIPT_BYTES as u64,
        });
    }
    let len = (receipt.len() as u32).to_be_bytes();
    w.write_all(&len).await.map_err(FrameError::Write)?;
    w.write_all(receipt).await.map_err(FrameError::Write)
}

/// Reads a receipt frame (at most [`MAX_RECEIPT_BYTES`], checked before
/// allocating) and checks that the stream ends after it.
pub async fn read_receipt<R: AsyncRead + Unpin>(r: &mut R, idle: Duration) -> Result<Vec<u8>, FrameError> {
    let mut b = [0u8; 4];
    if read_full(r, &mut b, idle, "receipt length").await? != b.len() {
        return Err(FrameError::TruncatedPrefix { what: "receipt" });
    }
    let declared = u32::from_be_bytes(b);
    if declared as usize > MAX_RECEIPT_BYTES {
        return Err(FrameError::TooLarge {
            what: "receipt",
            declared: u64::from(declared),
            max: MAX_RECEIPT_BYTES as u64,
        });
    }
    let mut receipt = vec![0u8; declared as usize];
    let got = read_full(r, &mut receipt, idle, "receipt").await?;
    if got != receipt.len() {
        return Err(FrameError::Truncated {
            what: "receipt",
            expected: u64::from(declared),
            got: got as u64,
        });
    }
    let mut probe = [0u8; 1];
    if timed(idle, "receipt end", r.read(&mut probe)).await? != 0 {
        return Err(FrameError::TrailingData {
            what: "receipt",
            expected: u64::from(declared),
        });
    }
    Ok(receipt)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn envelope_len_round_trip_and_truncation() {
        let mut out = Vec::new();
        write_envelope_len(&mut out, 0x0102_0304_0506_0708).await.unwrap();
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            read_envelope_len(&mut &out[..], T).await.unwrap(),
            0x0102_0304_0506_0708
        );
        assert!(matches!(
            read_envelope_len(&mut &out[..5], T).await,
            Err(FrameError::TruncatedPrefix { .. })
        ));
    }

    #[tokio::test]
    async fn copy_exact_checks_length() {
        let data = vec![7u8; 200_000];
        let mut sink = Vec::new();
        assert_eq!(
            copy_exact(&mut &data[..], &mut sink, 200_000, T).await.unwrap(),
            200_000
        );
        assert_eq!(sink, data);
        let mut sink = Vec::new();
        assert!(matches!(
            copy_exact(&mut &data[..], &mut sink, 200_001, T).await,
            Err(FrameError::Truncated { got: 200_000, .. })
        ));
        assert!(matches!(
            copy_exact(&mut &data[..], &mut Vec::new(), 199_999, T).await,
            Err(FrameError::TrailingData { .. })
        ));
        assert_eq!(copy_exact(&mut &[][..], &mut Vec::new(), 0, T).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn receipt_frames() {
        let mut out = Vec::new();
        write_receipt(&mut out, b"signed").await.unwrap();
        assert_eq!(&out[..4], &[0, 0, 0, 6]);
        assert_eq!(read_receipt(&mut &out[..], T).await.unwrap(), b"signed");
        assert!(write_receipt(&mut Vec::new(), &[0; MAX_RECEIPT_BYTES + 1])
            .await
            .is_err());
        let huge = 0xffff_ffffu32.to_be_bytes();
        assert!(matches!(
            read_receipt(&mut &huge[..], T).await,
            Err(FrameError::TooLarge {
                declared: 0xffff_ffff,
                ..
            })
        ));
        assert!(matches!(
            read_receipt(&mut &out[..7], T).await,
            Err(FrameError::Truncated { got: 3, .. })
        ));
        out.push(0);
        assert!(matches!(
            read_receipt(&mut &out[..], T).await,
            Err(FrameError::TrailingData { .. })
        ));
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (mut a, _b) = tokio::io::duplex(64);
        assert!(matches!(
            read_envelope_len(&mut a, Duration::from_millis(20)).await,
            Err(FrameError::Timeout(..))
        ));
    }
}
