//! Body helpers: size-limited request bodies, keeping a response for idempotent replay.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Incoming;

use crate::respond::{full, Body, BoxError};

/// A client body that fails once it passes `max` bytes.
pub fn limited(b: Incoming, max: u64) -> Body {
    Limited::new(b, usize::try_from(max).unwrap_or(usize::MAX)).boxed()
}

/// Whether an error (or one of its sources) is a body over its size limit.
pub fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// A stored body to replay.
pub fn replay_body(b: Option<Vec<u8>>) -> Body {
    full(b.unwrap_or_default())
}

/// Read `body` up to `max` bytes. Returns `(Some(all bytes), body of them)` when it ended
/// within `max`, else `(None, body that yields what was read and then the rest)`.
pub async fn keep_prefix(mut body: Body, max: usize) -> (Option<Bytes>, Body) {
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => {
                let b = buf.freeze();
                return (Some(b.clone()), full(b));
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    buf.extend_from_slice(&d);
                    if buf.len() > max {
                        let head: Result<Frame<Bytes>, BoxError> = Ok(Frame::data(buf.freeze()));
                        let rest = futures_util::stream::unfold(body, |mut b| async move {
                            b.frame().await.map(|f| (f, b))
                        });
                        let s = futures_util::StreamExt::chain(
                            futures_util::stream::iter([head]),
                            rest,
                        );
                        return (None, StreamBody::new(s).boxed());
                    }
                }
                Err(_trailers) => {}
            },
            Some(Err(e)) => {
                let s = futures_util::stream::iter([Err::<Frame<Bytes>, BoxError>(e)]);
                return (None, StreamBody::new(s).boxed());
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts the bytes it passes on and reports the total once, when it
    /// ends or is dropped (a client that leaves mid-stream still used what it received).
    pub struct Metered<F: FnOnce(u64)> {
        #[pin]
        inner: Body,
        seen: u64,
        report: Option<F>,
    }

    impl<F: FnOnce(u64)> PinnedDrop for Metered<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.report.take() {
                f(*this.seen);
            }
        }
    }
}

impl<F: FnOnce(u64)> Metered<F> {
    /// Count `inner`, calling `report` with the total.
    pub fn new(inner: Body, report: F) -> Self {
        Metered {
            inner,
            seen: 0,
            report: Some(report),
        }
    }
}

impl<F: FnOnce(u64)> http_body::Body for Metered<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    *this.seen += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = this.report.take() {
                    f(*this.seen);
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
