//! Response and request bodies: the boxed type every handler returns, and byte counting while they stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::error::BoxError;

/// The one body type of the gateway, both ways.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A JSON answer with the given status.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(full(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res
}

/// What a counted body reports the bytes of its data frames to.
pub trait Tally {
    fn add(&self, bytes: u64);
}

impl Tally for Arc<AtomicU64> {
    fn add(&self, bytes: u64) {
        self.fetch_add(bytes, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// Passes a body through, reporting the bytes of each data frame to `tally`, which it holds until dropped.
    pub struct Counted<B, T> {
        #[pin]
        inner: B,
        tally: T,
    }
}

impl<B, T> Counted<B, T> {
    pub fn new(inner: B, tally: T) -> Self {
        Self { inner, tally }
    }
}

impl<B, T> http_body::Body for Counted<B, T>
where
    B: http_body::Body<Data = Bytes>,
    T: Tally,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.tally.add(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that, dropped before its end (an early answer: 413, 415, 400), is read on and
/// thrown away for a while in the background, as nginx's lingering close does: closing a socket
/// with unread data makes the kernel reset it, and the client would lose the answer.
pub struct Linger {
    inner: Option<hyper::body::Incoming>,
}

/// How long, and how much, a dropped body is read on.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);
const LINGER_BYTES: u64 = 64 << 20;

impl Linger {
    pub fn new(inner: hyper::body::Incoming) -> Self {
        Self { inner: Some(inner) }
    }
}

impl http_body::Body for Linger {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(http_body::Body::size_hint)
            .unwrap_or_default()
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        let Some(mut rest) = self
            .inner
            .take()
            .filter(|b| !http_body::Body::is_end_stream(b))
        else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let drain = async {
                let mut read = 0u64;
                while let Some(Ok(frame)) = rest.frame().await {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > LINGER_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counted_adds_every_data_frame() {
        let counter = Arc::new(AtomicU64::new(0));
        let body = Counted::new(full("hello world"), counter.clone());
        let bytes = body.collect().await.expect("collect").to_bytes();
        assert_eq!(bytes.len(), 11);
        assert_eq!(counter.load(Ordering::Relaxed), 11);
    }
}
