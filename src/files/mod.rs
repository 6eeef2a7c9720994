//! Serving files: uploaded ones by id and the application's media, with Range, ETag and HEAD.

pub mod range;

use std::path::Path;

use http::{HeaderMap, Method, Response, header};

use crate::body::{self, Body};
use crate::error::{Error, Kind, Result};

/// A file to answer with.
pub struct Serve<'a> {
    pub path: &'a Path,
    pub content_type: &'a str,
    pub disposition: Option<(&'a str, &'a str)>,
    pub etag_extra: &'a str,
}

/// Placeholder until the full responder lands: the whole file, streamed.
pub async fn serve(
    method: &Method,
    _headers: &HeaderMap,
    file: Serve<'_>,
) -> Result<Response<Body>> {
    let f = tokio::fs::File::open(file.path)
        .await
        .map_err(|_| Error::new(Kind::NotFound, "no such file"))?;
    let len = f
        .metadata()
        .await
        .map_err(|e| Error::internal("stat", e))?
        .len();
    let stream = futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(http_body::Frame::data(bytes::Bytes::from(buf))), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let b = if method == Method::HEAD {
        body::empty()
    } else {
        body::boxed(http_body_util::StreamBody::new(stream))
    };
    let mut res = Response::new(b);
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, len.into());
    if let Ok(v) = file.content_type.parse() {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some((kind, name)) = file.disposition
        && let Ok(v) = range::content_disposition(kind, name).parse()
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    Ok(res)
}
