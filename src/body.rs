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

pin_project_lite::pin_project! {
    /// Passes a body through, adding the bytes of each data frame to a counter; holds `guard` until dropped.
    pub struct Counted<B, G> {
        #[pin]
        inner: B,
        counter: Arc<AtomicU64>,
        guard: G,
    }
}

impl<B, G> Counted<B, G> {
    pub fn new(inner: B, counter: Arc<AtomicU64>, guard: G) -> Self {
        Self {
            inner,
            counter,
            guard,
        }
    }
}

impl<B, G> http_body::Body for Counted<B, G>
where
    B: http_body::Body<Data = Bytes>,
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
            this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counted_adds_every_data_frame() {
        let counter = Arc::new(AtomicU64::new(0));
        let body = Counted::new(full("hello world"), counter.clone(), ());
        let bytes = body.collect().await.expect("collect").to_bytes();
        assert_eq!(bytes.len(), 11);
        assert_eq!(counter.load(Ordering::Relaxed), 11);
    }
}
