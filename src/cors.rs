//! CORS for upgate's own routes (SPEC §1 `[cors]`): pages on the listed origins may use the upload
//! API and the file routes from a browser, with credentials; everything upstream answers for itself.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::body::{self, Body};

const METHODS: &str = "GET, HEAD, POST, DELETE, OPTIONS";
const ALLOWED_HEADERS: &str =
    "X-Upload-Handle, Content-Type, Range, If-None-Match, If-Modified-Since, If-Range";
const EXPOSED: &str = "X-Upload-Handle, X-Request-Id, ETag, Content-Range";

/// The request's `Origin`, when it is one of the allowed origins (compared exactly, as browsers send it).
pub fn allowed_origin(headers: &HeaderMap, allow: &[String]) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?;
    let text = origin.to_str().ok()?;
    allow.iter().any(|o| o == text).then(|| origin.clone())
}

/// Whether a request is a CORS preflight (RFC: Fetch standard, "CORS-preflight request").
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight from an allowed origin.
pub fn preflight(origin: HeaderValue) -> Response<Body> {
    let mut res = Response::new(body::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(METHODS),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    decorate(h, origin);
    res
}

/// What every answer of upgate's own routes to an allowed origin carries.
pub fn decorate(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    headers.append(VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_exactly() {
        let allow = vec!["https://app.example".to_string()];
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static("https://app.example"));
        assert!(allowed_origin(&h, &allow).is_some());
        h.insert(ORIGIN, HeaderValue::from_static("https://app.example.evil"));
        assert!(allowed_origin(&h, &allow).is_none());
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(allowed_origin(&h, &allow).is_none());
    }

    #[test]
    fn preflight_answer() {
        let res = preflight(HeaderValue::from_static("https://app.example"));
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            res.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(res.headers()[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(
            res.headers()[ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .expect("ascii")
                .contains("X-Upload-Handle")
        );
    }
}
