//! An HTTP body read from an [`AsyncRead`] in pieces of 64 KiB: streams a
//! download out of the API and an upload out of the client, in bounded
//! memory. With a known length, hyper sends it as `Content-Length` and fails
//! the message if the reader yields a different number of bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

/// A body streamed from a reader.
pub(crate) struct ReaderBody {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    buf: Box<[u8]>,
    done: bool,
    length: Option<u64>,
}

impl ReaderBody {
    /// A body of `length` bytes (if known) read from `reader`.
    pub(crate) fn new(reader: Pin<Box<dyn AsyncRead + Send>>, length: Option<u64>) -> Self {
        Self {
            reader,
            buf: vec![0u8; 64 << 10].into_boxed_slice(),
            done: false,
            length,
        }
    }
}

impl Body for ReaderBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut rb = ReadBuf::new(&mut this.buf);
        match this.reader.as_mut().poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled()))))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
