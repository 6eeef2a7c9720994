//! upgate's own assets under `/_upgate/` (SPEC §1): never forwarded upstream.

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::body::{self, Body};
use crate::error::{Error, Kind, Result};

const UPLOADER: &str = include_str!("uploader.js");

/// Serves `/_upgate/<rest>`.
pub fn serve(method: &Method, rest: &str) -> Result<Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return Err(Error::new(
            Kind::MethodNotAllowed,
            "upgate's assets are read-only",
        ));
    }
    let (content_type, text) = match rest {
        "/uploader.js" => ("text/javascript; charset=utf-8", UPLOADER),
        _ => return Err(Error::new(Kind::NotFound, "no such upgate asset")),
    };
    let mut res = Response::new(if method == Method::HEAD {
        body::empty()
    } else {
        body::full(text)
    });
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(res)
}
